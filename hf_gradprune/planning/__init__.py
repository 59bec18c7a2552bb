"""Stage 2, planning: ``PruningPlan`` (which original units each layer keeps; plain data, JSON) and the algorithms
that make one from scores (global / per-layer ranking, budget splits, uniform and balanced shapes, FFN rounding),
and Kwon's rearrangement of a plan.

May import: ``units``, ``modeling_gradprune``, ``architectures``, ``state``, ``scoring``. Nothing above.
"""

from .plan import DEFAULT_FFN_MULTIPLE_OF, PlanError, PruningPlan
from .rearrange import rearrange_plan

__all__ = ["DEFAULT_FFN_MULTIPLE_OF", "PlanError", "PruningPlan", "rearrange_plan"]
