"""What a run tells people: the model card, the run report (before/after tables, latency, plots), task metrics.

May import: the pipeline, ``folders`` and ``deploy``. Not ``oneshot``, ``training`` or ``cli``.
"""
