"""Speed: latency of pruned encoders (``speed.py``) and decoders (``llm_speed.py``), latency budgets met by
measured tables (``latency_budget.py``), and the cost of scoring and surgery themselves (``overhead.py``)."""
