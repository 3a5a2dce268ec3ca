"""The engine: sans-IO invocation core, partition workers, the commit cycle and the Kafka adapter."""
