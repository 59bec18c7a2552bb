"""One-shot weight sparsity: the SparseGPT solver (``sparsity.obs``) against least squares, ``prune_weights_oneshot``
against full-model computations on the same data, exact sparsity and N:M on every family, the hybrid
``prune_oneshot`` call, refusals before any change, and the benchmark's quick mode."""

import copy
import functools
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import batch, make
from test_llama import make_decoder

from hf_gradprune import PruningPlan
from hf_gradprune import prune_oneshot as _prune_oneshot
from hf_gradprune.oneshot import prune_weights_oneshot
from hf_gradprune.oneshot.calibration import CalibrationError
from hf_gradprune.sparsity import (
    WeightScorer,
    masks_from_scores,
    recorded_weight_sparsity,
    satisfies_nm,
    weight_targets,
)
from hf_gradprune.sparsity.obs import sparsegpt_prune_
from hf_gradprune.state import pruning_state

# These tests pin the two steps as they were before the held-out choice (reconstruction on, rearrangement off) to test
# what they test on a few batches; the choice has its own tests (tests/test_oneshot_select.py). A call may override.
prune_oneshot = functools.partial(_prune_oneshot, reconstruct=True, rearrange=False)


ROOT = Path(__file__).resolve().parents[1]


# --- the OBS solver ---------------------------------------------------------------------------------------------
def _layer(seed=0, out=6, width=16, tokens=64, dtype=torch.float64):
    """Inputs as LLM activations have them: feature scales spread over orders of magnitude, mildly correlated."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.randn(width, generator=g, dtype=dtype))
    mix = torch.eye(width, dtype=dtype) + 0.3 * torch.randn(width, width, generator=g, dtype=dtype) / width**0.5
    X = (torch.randn(tokens, width, generator=g, dtype=dtype) * scales) @ mix
    W = torch.randn(out, width, generator=g, dtype=dtype)
    return W, X


@pytest.mark.parametrize("blocksize", [3, 128])
def test_obs_one_weight_per_row_is_the_least_squares_optimum_of_the_later_columns(blocksize):
    W, X = _layer()
    pruned = W.clone()
    keep = sparsegpt_prune_(pruned, X.T @ X, 1 / 16, scope="row", percdamp=0.0, blocksize=blocksize)
    assert (~keep).sum(1).tolist() == [1] * W.shape[0]
    for r in range(W.shape[0]):
        j = int((~keep[r]).nonzero())
        # columns before j are left as they were; the later ones are the exact least-squares fit of the row's
        # dense output without weight j
        target = X @ W[r] - X[:, :j] @ W[r, :j]
        later = torch.linalg.lstsq(X[:, j + 1 :], target[:, None]).solution[:, 0]
        expected = torch.cat([W[r, :j], torch.zeros(1, dtype=W.dtype), later])
        torch.testing.assert_close(pruned[r], expected, rtol=1e-9, atol=1e-9)


def test_obs_first_column_pruned_gives_the_full_optimum():
    W, X = _layer(seed=3, out=1, width=8)
    W[0, 0] = 1e-3  # the weight OBS removes first
    pruned = W.clone()
    keep = sparsegpt_prune_(pruned, X.T @ X, 1 / 8, scope="row", percdamp=0.0)
    assert not keep[0, 0] and keep[0, 1:].all()
    best = torch.linalg.lstsq(X[:, 1:], (X @ W[0])[:, None]).solution[:, 0]
    torch.testing.assert_close(pruned[0, 1:], best, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_obs_output_error_is_below_masks_without_update(pattern):
    W, X = _layer(seed=1, out=32, width=64, tokens=256)
    pruned = W.clone()
    keep = sparsegpt_prune_(pruned, X.T @ X, 0.5 if pattern == "unstructured" else None, pattern)
    assert int((pruned == 0).sum()) == W.numel() // 2 and torch.equal(pruned != 0, keep)
    if pattern == "2:4":
        assert satisfies_nm(pruned, 2, 4)

    def error(w):
        return float((X @ (W - w).T).square().sum())

    magnitude = masks_from_scores({"w": W.abs()}, 0.5, pattern, "layer")["w"]
    wanda = masks_from_scores({"w": W.abs() * X.square().sum(0).sqrt()[None, :]}, 0.5, pattern, "layer")["w"]
    assert error(pruned) < 0.8 * error(W * wanda) < 0.8 * error(W * magnitude)


def test_obs_nm_masks_do_not_depend_on_the_block_size_and_counts_are_exact():
    W, X = _layer(seed=2, out=8, width=24)
    results = []
    for blocksize in (4, 8, 128):
        w = W.clone()
        results.append((sparsegpt_prune_(w, X.T @ X, None, "2:4", blocksize=blocksize), w))
    for keep, w in results[1:]:
        assert torch.equal(keep, results[0][0])
        torch.testing.assert_close(w, results[0][1])
    for scope, sparsity in (("layer", 0.3), ("row", 0.75)):
        w = W.clone()
        keep = sparsegpt_prune_(w, X.T @ X, sparsity, scope=scope, blocksize=5)
        if scope == "layer":
            assert int((~keep).sum()) == round(sparsity * W.numel())
        else:
            assert (~keep).sum(1).tolist() == [round(sparsity * 24)] * 8


def test_obs_refuses_bad_input_before_changing_w():
    W, X = _layer()
    H = X.T @ X
    before = W.clone()
    cases = [
        (dict(H=H[:3]), "Hessian"),
        (dict(scope="global"), "scope"),
        (dict(percdamp=-1.0), "percdamp"),
        (dict(blocksize=0), "blocksize"),
        (dict(sparsity=0.8, pattern="2:4"), "must be 0.5"),
        (dict(H=H * torch.nan), "NaN"),
    ]
    for kwargs, match in cases:
        args = dict(H=H, sparsity=0.5, pattern="unstructured")
        args.update(kwargs)
        with pytest.raises(ValueError, match=match):
            sparsegpt_prune_(W, args.pop("H"), args.pop("sparsity"), args.pop("pattern"), **args)
    with pytest.raises(ValueError, match="positive definite"):
        sparsegpt_prune_(W, torch.zeros_like(H) - torch.eye(16, dtype=H.dtype), 0.5, percdamp=0.0)
    with pytest.raises(ValueError, match="not a multiple"):
        sparsegpt_prune_(W[:, :14].clone(), H[:14, :14], None, "2:4")
    assert torch.equal(W, before)


# --- the layer-wise stream against full-model forwards ---------------------------------------------------------
def _batches(kind, n=2):
    return [batch("gpt2" if kind == "llama" else kind, seed=s) for s in range(n)]


def _model(kind, **kw):
    return make_decoder(**kw) if kind == "llama" else make(kind)


def _partly_pruned(dense, pruned, layer):
    """The dense model with the pruned model's weights in the blocks before ``layer``."""
    ref = copy.deepcopy(dense)
    with torch.no_grad():
        for t, p in zip(weight_targets(ref), weight_targets(pruned)):
            if t.layer is not None and t.layer < layer:
                t.module.weight.copy_(p.module.weight)
    return ref


def _full_forward_hessians(model, targets, batches):
    """``sum x x^T`` over real tokens of each target's input, by a full forward of ``model``."""
    sums, current = {}, {}

    def make_hook(t):
        def hook(module, args):
            x = args[0].detach()
            rows = x[current["mask"]] if x.dim() == 3 else x
            sums[t.name] = sums.get(t.name, 0) + rows.T @ rows

        return hook

    handles = [t.module.register_forward_pre_hook(make_hook(t)) for t in targets]
    with torch.no_grad():
        for b in batches:
            current["mask"] = b["attention_mask"].bool()
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    for h in handles:
        h.remove()
    return sums


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_wanda_masks_equal_full_forward_scores_of_the_partly_pruned_model(pattern):
    dense = make_decoder(dtype=torch.float64)
    data = _batches("llama")
    pruned = copy.deepcopy(dense)
    sparsity = 0.5 if pattern == "unstructured" else None
    prune_weights_oneshot(pruned, data, sparsity, pattern, "wanda")
    layers = len(pruning_state(dense).layers)
    for i in range(layers):
        ref = _partly_pruned(dense, pruned, i)  # layer 0: the dense model itself
        targets = [t for t in weight_targets(ref) if t.layer == i]
        scorer = WeightScorer(ref, "wanda", targets)
        with scorer, torch.no_grad():
            for b in data:
                ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        expected = masks_from_scores(scorer.scores(), 0.5, pattern, "row")
        got = {t.name: t.matrix != 0 for t in weight_targets(pruned) if t.layer == i}
        for name, keep in expected.items():
            assert torch.equal(got[name], keep), (i, name)


def test_sparsegpt_weights_equal_the_solver_on_full_forward_hessians():
    dense = make_decoder(dtype=torch.float64)
    data = _batches("llama")
    pruned = copy.deepcopy(dense)
    prune_weights_oneshot(pruned, data, 0.5, "unstructured", "sparsegpt", blocksize=16)
    for i in range(len(pruning_state(dense).layers)):
        ref = _partly_pruned(dense, pruned, i)
        targets = [t for t in weight_targets(ref) if t.layer == i]
        hessians = _full_forward_hessians(ref, targets, data)
        got = {t.name: t.matrix for t in weight_targets(pruned) if t.layer == i}
        for t in targets:
            w = t.matrix.detach().clone()
            sparsegpt_prune_(w, hessians[t.name], 0.5, blocksize=16)
            torch.testing.assert_close(got[t.name], w, rtol=1e-7, atol=1e-9)


def test_gradient_scores_are_those_of_autograd_weight_gradients():
    dense = make_decoder(dtype=torch.float64)
    data = _batches("llama", 3)
    for method in ("taylor", "fisher"):
        pruned = copy.deepcopy(dense)
        prune_weights_oneshot(pruned, data, 0.5, "unstructured", method, scope="layer")
        ref = copy.deepcopy(dense)
        targets = weight_targets(ref)
        stats = {t.name: 0 for t in targets}
        for b in data:
            ref.zero_grad()
            ref(**b).loss.backward()
            for t in targets:
                g = t.module.weight.grad if t.in_axis == 1 else t.module.weight.grad.t()
                stats[t.name] = stats[t.name] + ((t.matrix * g).abs() if method == "taylor" else g.square())
        scores = {
            t.name: stats[t.name] if method == "taylor" else 0.5 * t.matrix.detach() ** 2 * stats[t.name] / len(data)
            for t in targets
        }
        expected = masks_from_scores(scores, 0.5, "unstructured", "layer")
        for t in weight_targets(pruned):
            assert torch.equal(t.matrix != 0, expected[t.name]), (method, t.name)


def test_gblm_masks_equal_wanda_norms_plus_dense_per_batch_gradient_norms():
    dense = make_decoder(dtype=torch.float64)
    data = _batches("llama", 3)
    pruned = copy.deepcopy(dense)
    prune_weights_oneshot(pruned, data, 0.5, "unstructured", "gblm", gradient_scale=30.0)
    # the gradient term: sum over batches of the squared weight gradient of each batch's loss, on the dense model
    grad_model = copy.deepcopy(dense)
    g2 = {t.name: 0 for t in weight_targets(grad_model)}
    for b in data:
        grad_model.zero_grad()
        grad_model(**b).loss.backward()
        for t in weight_targets(grad_model):
            g2[t.name] = g2[t.name] + (t.module.weight.grad if t.in_axis == 1 else t.module.weight.grad.t()) ** 2
    sequences = sum(b["input_ids"].shape[0] for b in data)
    for i in range(len(pruning_state(dense).layers)):
        ref = _partly_pruned(dense, pruned, i)
        targets = [t for t in weight_targets(ref) if t.layer == i]
        scorer = WeightScorer(ref, "wanda", targets)
        with scorer, torch.no_grad():
            for b in data:
                ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        scores = {
            t.name: t.matrix.detach().abs()
            * ((scorer.sq_norms[t.name] / sequences).sqrt()[None, :] + 30.0 * g2[t.name].sqrt())
            for t in targets
        }
        expected = masks_from_scores(scores, 0.5, "unstructured", "row")
        got = {t.name: t.matrix != 0 for t in weight_targets(pruned) if t.layer == i}
        for name, keep in expected.items():
            assert torch.equal(got[name], keep), (i, name)
    wanda = copy.deepcopy(dense)
    prune_weights_oneshot(wanda, data, 0.5, "unstructured", "wanda")
    assert any(
        not torch.equal(a.matrix != 0, b.matrix != 0) for a, b in zip(weight_targets(wanda), weight_targets(pruned))
    )


def test_micro_batches_score_each_part_as_a_batch():
    dense = make_decoder(dtype=torch.float64)
    whole = batch("gpt2", seed=0, size=4)
    split = [{k: v[i : i + 2] for k, v in whole.items()} for i in (0, 2)]
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    prune_weights_oneshot(a, [whole], 0.5, method="fisher", micro_batch_size=2)
    prune_weights_oneshot(b, split, 0.5, method="fisher")
    for ta, tb in zip(weight_targets(a), weight_targets(b)):
        assert torch.equal(ta.matrix != 0, tb.matrix != 0)


# --- every family: exact sparsity, N:M, the record ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "taylor", "fisher", "gblm"])
def test_exact_sparsity_and_nm_on_every_family(kind, method):
    for pattern in ("unstructured", "2:4"):
        model = _model(kind)
        report = prune_weights_oneshot(
            model, _batches(kind), 0.5 if pattern == "unstructured" else None, pattern, method
        )
        targets = weight_targets(model)
        for t in targets:
            if pattern == "2:4":
                assert satisfies_nm(t.matrix, 2, 4), t.name
                assert int((t.matrix == 0).sum()) == t.matrix.numel() // 2
            elif report.scope == "row":
                assert (t.matrix == 0).sum(1).tolist() == [t.matrix.shape[1] // 2] * t.matrix.shape[0]
            else:
                assert int((t.matrix == 0).sum()) == round(0.5 * t.matrix.numel())
        assert report.measured == pytest.approx(0.5)
        record = recorded_weight_sparsity(model.config)
        assert record["method"] == method and record["pattern"] == pattern and record["measured"] == pytest.approx(0.5)
        assert record["targets"] == [t.name for t in targets]
        with torch.no_grad():
            out = model(**{k: v for k, v in _batches(kind, 1)[0].items() if k != "labels"})
        assert torch.isfinite(out.logits).all()


def test_extra_modules_are_calibrated_on_the_pruned_models_inputs():
    model = make_decoder(dtype=torch.float64)
    data = _batches("llama")
    dense_head = model.lm_head.weight.detach().clone()
    report = prune_weights_oneshot(model, data, 0.5, method="wanda", extra_modules=("lm_head",))
    assert report.per_layer["lm_head"] == pytest.approx(0.5)
    # wanda on the lm_head's inputs in the pruned model (its blocks sparse), the head itself still dense
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.lm_head.weight.copy_(dense_head)
    scorer = WeightScorer(ref, "wanda", [t for t in weight_targets(ref, ("lm_head",)) if t.layer is None])
    with scorer, torch.no_grad():
        for b in data:
            ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    expected = masks_from_scores(scorer.scores(), 0.5, "unstructured", "row")["lm_head"]
    assert torch.equal(model.lm_head.weight != 0, expected)


# --- refusals: nothing changes ------------------------------------------------------------------------------------
def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(model.config.to_dict())


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="obd"), ValueError, "weight_method must be"),
        (dict(sparsity=0.8, pattern="2:4"), ValueError, "must be 0.5"),
        (dict(sparsity=1.0), ValueError, "fraction"),
        (dict(scope="global"), ValueError, "cannot rank"),
        (dict(scope="rows"), ValueError, "sparsity_scope"),
        (dict(batches=None), CalibrationError, "reads calibration batches"),
        (dict(batches=[]), CalibrationError, "no batch"),
        (dict(micro_batch_size=2), ValueError, "taylor/fisher"),
        (dict(method="gblm", gradient_scale=-1.0), ValueError, "gradient_scale"),
        (dict(method="gblm", scope="global"), ValueError, "cannot rank"),
        (dict(method="sparsegpt", percdamp=-0.1), ValueError, "percdamp"),
        (dict(extra_modules=("nope",)), ValueError, "no module"),
        (dict(pattern="4:8", model="bert98"), ValueError, "multiple"),
        (dict(batches="allpad"), CalibrationError, "no tokens"),
        (dict(method="fisher", batches="noids"), CalibrationError, "input_ids"),
    ],
)
def test_refusals_leave_the_model_unchanged(kwargs, error, match):
    kwargs = dict(kwargs)
    model = make("bert", intermediate_size=98) if kwargs.pop("model", None) else make_decoder()
    data = _batches("llama")
    batches = kwargs.pop("batches", data)
    if batches == "allpad":
        batches = [{**b, "attention_mask": torch.zeros_like(b["attention_mask"])} for b in data]
    elif batches == "noids":
        batches = [{"inputs_embeds": torch.randn(2, 5, 32)}]
    before, config = _snapshot(model)
    args = dict(sparsity=0.5, pattern="unstructured", method="wanda")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        prune_weights_oneshot(model, batches, **args)
    after, config_after = _snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before) and config == config_after


# --- hybrid: units, then weights, in one call ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_hybrid_cuts_units_then_sparsifies_what_remains(kind):
    model = _model(kind)
    geometry = pruning_state(model).geometry
    data = _batches(kind, 3)
    _, report = prune_oneshot(
        model,
        data,
        params_budget=0.3,
        split="ratio",
        ffn_multiple_of=8,
        weight_sparsity=None,
        sparsity_pattern="2:4",
        weight_method="sparsegpt",
    )
    state = pruning_state(model)
    assert (
        sum(map(len, state.head_ids)) < geometry.num_layers * geometry.num_heads
        or sum(map(len, state.neuron_ids)) < geometry.num_layers * geometry.intermediate_size
    )
    assert report.weights is not None and report.weights.measured == pytest.approx(0.5)
    assert all(satisfies_nm(t.matrix, 2, 4) for t in weight_targets(model))
    assert "weights" in report.seconds and report.to_dict()["weights"]["pattern"] == "2:4"
    assert recorded_weight_sparsity(model.config)["method"] == "sparsegpt"
    assert report.reconstruction is not None  # units reconstructed before the weights went


def test_hybrid_refuses_bad_weight_options_before_the_cut():
    model = make_decoder()
    data = _batches("llama")
    before, config = _snapshot(model)
    geometry = pruning_state(model).geometry
    odd = PruningPlan(geometry, [list(range(geometry.num_heads))] * geometry.num_layers, [list(range(38))] * 3)
    for kwargs, match in (
        (dict(params_budget=0.3, weight_method="obd", weight_sparsity=0.5), "weight_method"),
        (dict(params_budget=0.3, weight_sparsity=0.7, sparsity_pattern="2:4"), "must be 0.5"),
        (dict(params_budget=0.3, sparsity_scope="row"), "give weight_sparsity"),
        (dict(plan=odd, sparsity_pattern="2:4"), "not a multiple of 4"),
    ):
        with pytest.raises(ValueError, match=match):
            prune_oneshot(model, data, reconstruct=False, **kwargs)
        after, config_after = _snapshot(model)
        assert all(torch.equal(before[k], after[k]) for k in before) and config == config_after


# --- the benchmark's quick mode -----------------------------------------------------------------------------------
def test_llm_sparsity_benchmark_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from oneshot import llm_sparsity

    result = llm_sparsity.main(["--quick", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "llm_sparsity.json").read_text())
    assert written["rows"] == json.loads(json.dumps(result["rows"]))
    assert {(r["pattern"], r["method"]) for r in written["rows"]} == {
        (p, m) for p in llm_sparsity.PATTERNS for m in llm_sparsity.METHODS
    }
    for row in written["rows"]:
        assert row["sparsity"] == pytest.approx(0.5) and row["perplexity"] > 1
        assert row["ratio_to_dense"] == pytest.approx(row["perplexity"] / written["dense_perplexity"], rel=1e-3)
    assert set(written["goals"]) == set(llm_sparsity.PATTERNS)


# --- hf-gradprune prune: the weight flags -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
    from conftest import WORDS, save_tiny_tokenizer, sentiment_rows, tiny_gpt2_config
    from transformers import GPT2LMHeadModel

    tmp = tmp_path_factory.mktemp("cli-weights")
    torch.manual_seed(0)
    tok = save_tiny_tokenizer(tmp / "gpt2")
    config = tiny_gpt2_config(
        vocab_size=5 + len(WORDS), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=0
    )
    GPT2LMHeadModel(config).save_pretrained(tmp / "gpt2")
    (tmp / "texts.txt").write_text("\n".join(r["sentence"] for r in sentiment_rows(64, seed=0) * 2) + "\n")
    return tmp


def _prune_args(tmp, out, *flags):
    args = ["prune", "--model_name_or_path", str(tmp / "gpt2"), "--train_file", str(tmp / "texts.txt")]
    args += ["--oneshot", "--block_size", "16", "--cache_dir", str(tmp / "cache"), "--output_dir", str(out)]
    return args + ["--use_cpu", "--report_to", "none", "--disable_tqdm", "true", "--seed", "0", *flags]


@pytest.mark.parametrize(
    "flags, method, units",
    [
        (["--sparsity_pattern", "2:4"], "wanda", False),  # weights only; the one-shot default method
        (["--weight_sparsity", "0.5", "--weight_method", "magnitude", "--sparsity_scope", "row"], "magnitude", False),
        (["--sparsity_pattern", "2:4", "--head_sparsity", "0.5", "--ffn_multiple_of", "8"], "wanda", True),  # hybrid
        (["--sparsity_pattern", "2:4", "--weight_method", "sparsegpt"], "sparsegpt", False),  # one-shot only
    ],
)
def test_cli_prunes_weights_one_shot_and_prints_the_sparsity(gpt2_folder, capsys, flags, method, units):
    from hf_gradprune import load_pruned
    from hf_gradprune.cli.main import main

    out = gpt2_folder / f"out-{method}-{units}"
    assert main(_prune_args(gpt2_folder, out, *flags)) == 0
    printed = capsys.readouterr().out
    assert "weight sparsity: 50.00% of 12 matrices" in printed and method in printed
    model = load_pruned(out)
    record = recorded_weight_sparsity(model.config)
    assert record["method"] == method and record["measured"] == pytest.approx(0.5)
    report = json.loads((out / "oneshot_report.json").read_text())
    if units:
        assert report["weights"]["pattern"] == "2:4" and report["plan"]["meta"]
        assert pruning_state(model).geometry.num_heads * 3 > sum(map(len, pruning_state(model).head_ids))
    else:
        assert report["method"] == method
    if "2:4" in flags:
        assert all(satisfies_nm(t.matrix, 2, 4) for t in weight_targets(model))


@pytest.mark.parametrize(
    "flags, match",
    [
        (["--weight_sparsity", "0.8", "--sparsity_pattern", "2:4"], "must be 0.5"),
        (["--weight_sparsity", "0.5", "--sparsity_scope", "global"], "cannot rank"),
        (["--sparsity_pattern", "3:5"], "cannot be split"),  # 64 inputs: no whole groups of 5
        (["--sparsity_pattern", "2:4", "--sparsity_extra_modules", "nope"], "no module"),
    ],
)
def test_cli_refuses_bad_weight_options_in_one_line(gpt2_folder, capsys, flags, match):
    from hf_gradprune.cli.main import main

    out = gpt2_folder / "refused"
    assert main(_prune_args(gpt2_folder, out, *flags)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # not the loading bars
    assert len(errors) == 1 and match in errors[0] and errors[0].startswith("hf-gradprune prune: error:")
    assert not out.exists()


def test_smollm2_oneshot_recipe_parses_for_prune(gpt2_folder):
    """recipes/smollm2/oneshot-2of4.yaml: `hf-gradprune prune --config` reads it as one-shot 2:4 weights only."""
    from hf_gradprune.cli import prune as prune_command

    recipe = ROOT / "recipes" / "smollm2" / "oneshot-2of4.yaml"
    args = ["--config", str(recipe), "--model_name_or_path", str(gpt2_folder / "gpt2")]
    args += ["--train_file", str(gpt2_folder / "texts.txt"), "--output_dir", str(gpt2_folder / "o")]
    task, _, data, training, prune, given = prune_command.prune_arguments(args)
    assert task == "text-generation" and prune.oneshot and data.block_size == 256
    assert not training.plan_targets() and training.sparsifies_weights
    options = prune_command.weight_options(training, given)
    assert options == {
        "weight_sparsity": None,
        "sparsity_pattern": "2:4",
        "weight_method": "sparsegpt",
        "sparsity_scope": None,
    }
