"""One-shot pruning without retraining: reconstruction and the budget search on BERT (``retrain_free.py``,
``reconstruct_variants.py``) and on a decoder (``llm_reconstruct.py``), and LLM perplexity by method and plan
(``llm_quality.py``), and what one-shot pruning costs step by step on LLM shapes (``llm_scale.py``)."""
