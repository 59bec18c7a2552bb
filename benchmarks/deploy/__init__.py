"""Deployment: pruning stacked with ONNX Runtime int8, accuracy and latency on CPU (``deploy.py``)."""
