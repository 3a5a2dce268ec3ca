"""The cluster-wide CLI: ``processor invocations | journal | state | timers | cancel | kill | purge |
retry | instances`` find the app's live instances through Kafka (``discovery``), ask each over its
admin endpoint (``fanout``), merge the answers (``merge``) and print them (``render``); with no live
instance they read the stores of a ``--state-dir`` (``local``). See docs/operate.md and
docs/decisions/009-instance-registry.md."""
