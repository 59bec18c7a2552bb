"""The GPU check (``make gpu-check``): the GPU tests, a real training pass, bf16 speed and one-shot pruning on a
CUDA device. ``gpu_check.py`` runs it; its measured parts: the trainer pass and one-shot timing in ``gpu_parts.py``,
the speed rows in ``gpu_speed.py``."""
