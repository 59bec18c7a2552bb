"""Prune a BERT-family model on a GLUE task (or your CSV/JSON files) with GradPruneTrainer.

Follows transformers' ``examples/pytorch/text-classification/run_glue.py``. Evaluates the dense model,
the pruned model before recovery (and, with ``--reconstruct true``, after layer-wise reconstruction) and
after recovery; writes ``all_results.json``, the Hub-ready pruned
folder with its model card, and a pruning report (JSON, heat map of heads kept, bar chart of FFN
neurons kept, measured dense-vs-pruned latency on this machine).

    python examples/run_glue_prune.py --config recipes/bert-base-uncased/sst2.yaml
    python examples/run_glue_prune.py --model_name_or_path bert-base-uncased --task_name mrpc \\
        --dense_train_epochs 3 --head_sparsity 0.5 --ffn_sparsity 0.5 --output_dir out/mrpc
    accelerate launch --multi_gpu --num_processes 4 examples/run_glue_prune.py --config ...

The same run from the installed command line (``hf-gradprune prune`` parses these arguments and runs this
code, from ``hf_gradprune.cli.data`` and ``hf_gradprune.cli.runs``; ``--oneshot`` prunes without training instead):

    hf-gradprune prune --model_name_or_path bert-base-uncased --task_name mrpc \\
        --head_sparsity 0.5 --output_dir out/mrpc
"""

from __future__ import annotations

import logging

from transformers import set_seed

from hf_gradprune import GradPruneConfig
from hf_gradprune.cli.data import ClassificationDataArguments, prepare_classification
from hf_gradprune.cli.runs import ModelArguments, parse_args, prune_and_report

# The data arguments by the name transformers' run_glue.py gives them; they live in the package, shared with
# `hf-gradprune prune` (as does the setup: data, tokenizer, model and metrics in `prepare_classification`).
DataTrainingArguments = ClassificationDataArguments


def main(args: list[str] | None = None) -> dict:
    model_args, data_args, training_args = parse_args((ModelArguments, DataTrainingArguments, GradPruneConfig), args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(training_args.seed)
    run = prepare_classification(model_args, data_args, training_args)
    return prune_and_report(run.model, training_args, data_args, run.results, **run.report_kwargs())


if __name__ == "__main__":
    main()  # prints the summary tables; all_results.json holds every number
