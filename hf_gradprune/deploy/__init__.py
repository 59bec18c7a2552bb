"""Stage 5, deployment: latency measurement and tables (``latency``), ONNX Runtime export and int8
(``onnx_export``).

May import: the pipeline and ``folders``. Not ``oneshot``, ``training``, ``reports`` or ``cli``.
"""
