"""What a run tells people: the model card, the run report (before/after tables, latency, plots), task metrics.

May import: every layer below it (the pipeline, ``oneshot``, ``folders``, ``deploy``); not ``training`` or ``cli``
(``tests/test_layers.py``).
"""
