"""salesfc: weekly sales demand forecasting with Feast, PyTorch DDP and Kubeflow Trainer."""

__version__ = "0.1.0"
