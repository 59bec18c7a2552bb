"""Entry points: the ``hf-gradprune`` command (``main``), the example scripts' shared run (``runs``: recipes,
argument parsing, the dense fine-tune, prune and report), their data loading (``data``) and the convert-v4
command. The top layer: it may import anything in the package; nothing imports it.
"""
