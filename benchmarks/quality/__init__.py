"""Scoring and planning quality: accuracy at a FLOPs budget by importance method (``quality.py``), against the
Torch-Pruning peer (``peer_torch_pruning.py``), with the searched budget split (``budget_split.py``) and with
rearranged plans (``rearrange.py``)."""
