"""Pruning while training: ``GradPruneConfig`` (a ``TrainingArguments``) and ``GradPruneTrainer`` (a ``Trainer``),
with the one place that touches Accelerate's private state (``accelerate_compat``) and the one that bridges
transformers releases (``transformers_compat``).

May import: everything below ``cli``: the pipeline, ``oneshot``, ``folders``, ``deploy``, ``reports``.
"""
