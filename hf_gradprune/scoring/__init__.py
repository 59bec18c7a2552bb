"""Stage 1, scoring: ``ImportanceScorer`` (hooks that accumulate gradient x activation per head and neuron) and
``Scores`` (the data it produces, saved and loaded).

May import: ``units``, ``modeling_gradprune``, ``architectures``, ``state``; nothing above (``tests/test_layers.py``).
"""

from .scorer import ImportanceScorer
from .scores import GRADIENT_METHODS, METHODS, Scores, ScoresError

__all__ = ["GRADIENT_METHODS", "METHODS", "ImportanceScorer", "Scores", "ScoresError"]
