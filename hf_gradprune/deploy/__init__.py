"""Stage 5, deployment: latency measurement and tables (``latency``), ONNX Runtime export and int8
(``onnx_export``).

May import: every layer below it (the pipeline, ``oneshot``, ``folders``); not ``reports``, ``training`` or ``cli``
(``tests/test_layers.py``).
"""
