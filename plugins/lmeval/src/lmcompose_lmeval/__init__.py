"""lm-evaluation-harness tasks as lmcompose metrics (``lmeval``), on the in-memory model."""

__version__ = "0.1.0"
