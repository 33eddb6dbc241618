"""lmcompose-mlflow: MLflow tracking of runs, sweeps and studies (see README.md)."""

from lmcompose_mlflow.tracker import MLflowTracker, tracking_uri

__all__ = ["MLflowTracker", "tracking_uri"]
