"""Apps the engine benchmarks run with `python -m processor run benchmarks.apps.MODULE:app`; topic and
app names come from environment variables so every run gets its own."""
