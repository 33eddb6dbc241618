"""Built-in metrics (registered as default plugins). Definitions: docs/metrics.md."""
