"""Pruning while training: ``GradPruneConfig`` (a ``TrainingArguments``) and ``GradPruneTrainer`` (a ``Trainer``),
with the one place that touches Accelerate's private state (``accelerate_compat``) and the one that bridges
transformers releases (``transformers_compat``).

May import: every layer below it (the pipeline, ``oneshot``, ``folders``, ``deploy``, ``reports``); not ``cli``
(``tests/test_layers.py``).
"""
