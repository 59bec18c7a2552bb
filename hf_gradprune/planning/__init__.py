"""Stage 2, planning: ``PruningPlan`` (which original units each layer keeps; plain data, JSON) and the algorithms
that make one from scores (global / per-layer ranking, budget splits, uniform and balanced shapes, FFN rounding),
and Kwon's rearrangement of a plan.

Modules, lowest first; each imports only modules listed before it, so the algorithms never import ``plan``:
``validation`` (``PlanError``, the one check of targets and options, ``plain_json``), ``atoms`` (what a plan removes
in one piece, their order and costs), ``ranking`` (by count, by budget, heads kept then neurons), ``shapes``
(uniform, balanced, FFN rounding), ``latency_budget`` (to a latency table's prediction), ``plan`` (``PruningPlan``:
the data, its costs, JSON, and ``from_scores``), ``rearrange`` (Kwon's greedy swap, on a plan).

May import: ``units``, ``modeling_gradprune``, ``architectures``, ``state``, ``scoring``. Nothing above.
"""

from .plan import DEFAULT_FFN_MULTIPLE_OF, PlanError, PruningPlan
from .rearrange import rearrange_plan

__all__ = ["DEFAULT_FFN_MULTIPLE_OF", "PlanError", "PruningPlan", "rearrange_plan"]
