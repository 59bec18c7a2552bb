"""Saved folders: disk size of the weight-sparse storage formats (``sparse_disk.py``)."""
