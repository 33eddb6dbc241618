"""Unlearning for lmcompose: GA, GD, NPO and RMU (kind ``unlearn``), and an offline
fact-unlearning benchmark with its metrics (forget and retain accuracy)."""

__version__ = "0.4.0"
