"""Prune a causal language model (GPT-2, or a Llama-family decoder: Llama, SmolLM, Mistral, Qwen2, Qwen3) on
wikitext (or your text files) with GradPruneTrainer.

Follows transformers' ``examples/pytorch/language-modeling/run_clm.py``: texts are tokenized, concatenated
and cut into blocks of ``--block_size`` tokens with labels = input_ids. Reports perplexity of the dense
model, of the pruned model before recovery (and, with ``--reconstruct true``, after layer-wise
reconstruction) and after recovery; writes ``all_results.json``, the Hub-ready
pruned folder with its model card, and a pruning report (JSON, heat map of heads kept, bar chart of FFN
neurons kept, measured dense-vs-pruned latency on this machine).

    python examples/run_clm_prune.py --config recipes/gpt2/wikitext-2.yaml
    python examples/run_clm_prune.py --model_name_or_path gpt2 --train_file train.txt \\
        --validation_file valid.txt --block_size 512 --head_sparsity 0.4 --ffn_sparsity 0.4 --output_dir out/clm
    accelerate launch --multi_gpu --num_processes 4 examples/run_clm_prune.py --config ...
    python examples/demo_llm.py   # SmolLM2-135M offline, recipes/smollm2/demo.yaml (make demo-llm)

Llama-family decoders: ``--uniform true`` keeps the same heads per key/value group, key/value heads and FFN width
in every layer, so the saved folder is a stock checkpoint (no remote code); ``--attention_unit kv_group`` removes
whole key/value groups instead of query heads within them.

The same run from the installed command line (``hf-gradprune prune`` parses these arguments and runs this
code, from ``hf_gradprune.cli.data`` and ``hf_gradprune.cli.runs``; ``--oneshot`` prunes without training instead):

    hf-gradprune prune --model_name_or_path gpt2 --train_file train.txt --block_size 512 \\
        --head_sparsity 0.4 --output_dir out/clm
"""

from __future__ import annotations

import logging

from transformers import set_seed

from hf_gradprune import GradPruneConfig
from hf_gradprune.cli.data import CausalLMDataArguments, prepare_causal_lm
from hf_gradprune.cli.runs import ModelArguments, parse_args, prune_and_report

# The data arguments by the name transformers' run_clm.py gives them; they live in the package, shared with
# `hf-gradprune prune` (as does the setup: texts, tokenizer, model, blocks and metrics in `prepare_causal_lm`).
DataTrainingArguments = CausalLMDataArguments


def main(args: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args((ModelArguments, DataTrainingArguments, GradPruneConfig), args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    run = prepare_causal_lm(model_args, data_args, training_args)
    return prune_and_report(run.model, training_args, data_args, run.results, **run.report_kwargs())


if __name__ == "__main__":
    main()  # prints the summary tables; all_results.json holds every number
