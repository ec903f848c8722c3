"""Dynoserve's HTTP gateway: image URLs and uploads in, TF Serving gRPC Predict calls out."""

__version__ = "0.1.0"
