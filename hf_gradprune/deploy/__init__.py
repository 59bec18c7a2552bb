"""Stage 5, deployment: latency measurement and tables (``latency``), ONNX Runtime export and int8
(``onnx_export``), and 2:4 weights on NVIDIA's sparse tensor cores (``semi_structured``: ``to_semi_structured``).

May import: every layer below it (the pipeline, ``oneshot``, ``folders``, ``sparsity``); not ``reports``,
``training`` or ``cli`` (``tests/test_layers.py``).
"""
