"""The GPU check (``make gpu-check``): the GPU tests, a real training pass, bf16 speed and one-shot pruning on a
CUDA device (``gpu_check.py``, its measured parts in ``gpu_parts.py``)."""
