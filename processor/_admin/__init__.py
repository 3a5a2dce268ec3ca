"""The admin endpoint: health and readiness probes, Prometheus metrics and a JSON API per instance."""
