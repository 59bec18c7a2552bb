"""Layer-wise least-squares reconstruction: the solve against explicit matrices, folding, errors, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import batch, make_bert, make_gpt2, uneven_plan
from test_llama import make_decoder
from test_llama import uneven_plan as llama_uneven_plan

from hf_gradprune import load_pruned, prune_model, save_pruned
from hf_gradprune.oneshot.calibration import CalibrationError
from hf_gradprune.oneshot.reconstruct import ReconstructionError, reconstruct
from hf_gradprune.state import pruning_state
from hf_gradprune.units import HEAD, NEURON


def loader(kind, n=3, size=4, length=12, seed=10, left_pad=True):
    out = []
    for i in range(n):
        b = batch(kind, seed=seed + i, size=size, length=length) if kind in ("bert", "gpt2") else None
        if b is None:
            from test_llama import batch as llama_batch

            b = llama_batch(seed=seed + i, size=size, length=length, left_pad=left_pad)
        out.append(b)
    return out


def pruned_pair(kind, attn="eager", dtype=torch.float32):
    if kind == "bert":
        dense = make_bert(attn_implementation=attn).to(dtype)
        plan = uneven_plan(dense, zero_layer=0)
    elif kind == "gpt2":
        dense = make_gpt2(attn_implementation=attn).to(dtype)
        plan = uneven_plan(dense, zero_layer=1)
    else:
        dense = make_decoder(kind, attn=attn, dtype=dtype)
        plan = llama_uneven_plan(dense, zero_layer=0)
    model = copy.deepcopy(dense)
    prune_model(model, plan)
    return model, dense


def logits(model, inputs):
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits


def fitted_scales(before, after, kind):
    """Per kept unit, the factor its output-projection columns were multiplied by (weights equal up to it)."""
    state = pruning_state(before)
    adapter, d = state.adapter, state.geometry.head_dim
    out = []
    for b_layer, a_layer in zip(state.layers, pruning_state(after).layers):
        proj = adapter.attention_output if kind == HEAD else adapter.ffn_output
        wb, wa = adapter.output_weight(proj(b_layer)).double(), adapter.output_weight(proj(a_layer)).double()
        group = d if kind == HEAD else 1
        units = wb.shape[1] // group
        ratio = [
            float((wa[:, u * group : (u + 1) * group] * wb[:, u * group : (u + 1) * group]).sum().detach())
            / float(wb[:, u * group : (u + 1) * group].pow(2).sum().detach())
            for u in range(units)
        ]
        out.append(torch.tensor(ratio, dtype=torch.float64))
    return out


# ---------------------------------------------------------------------- an explicit reference
@torch.no_grad()
def _explicit_rows(model, dense, batches, index, kind, first_only=False):
    """A (tokens*hidden x units) and b, built token by token from each unit's own contribution; ``first_only``:
    the first token of each sequence only (what BERT's pooler reads)."""
    state, t_state = pruning_state(model), pruning_state(dense)
    adapter, d = state.adapter, state.geometry.head_dim
    layer, t_layer = state.layers[index], t_state.layers[index]
    proj = (adapter.attention_output if kind == HEAD else adapter.ffn_output)(layer)
    group = d if kind == HEAD else 1
    w = adapter.output_weight(proj).double()
    rows_a, rows_b = [], []
    for inputs in batches:
        got = {}

        def keeper(name, store=got):
            def hook(value):
                store[name] = (value[0] if isinstance(value, tuple) else value).detach().double()

            return hook

        handles = []
        for (point, where), name in (
            (adapter.residual_output(layer, kind), "y_s"),
            (adapter.residual_output(t_layer, kind), "y_t"),
        ):
            grab = keeper(name)
            if where == "input":
                handles.append(point.register_forward_pre_hook(lambda m, a, f=grab: f(a)))
            else:
                handles.append(point.register_forward_hook(lambda m, a, o, f=grab: f(o)))
        grab_z = keeper("z")
        handles.append(proj.register_forward_pre_hook(lambda m, a, f=grab_z: f(a)))
        x = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            model(**x)
            dense(**x)
        for h in handles:
            h.remove()
        mask = x["attention_mask"].bool()
        if first_only:
            mask = mask & (torch.arange(mask.shape[1]) == 0)[None, :]
        mask = mask.reshape(-1)
        z = got["z"].reshape(-1, got["z"].shape[-1])[mask]
        units = z.shape[1] // group
        contrib = torch.stack(
            [z[:, u * group : (u + 1) * group] @ w[:, u * group : (u + 1) * group].t() for u in range(units)], -1
        )  # [tokens, hidden, units]
        hidden = w.shape[0]
        rest = got["y_s"].reshape(-1, hidden)[mask] - contrib.sum(-1)  # residual + bias
        rows_a.append(contrib.reshape(-1, units))
        rows_b.append((got["y_t"].reshape(-1, hidden)[mask] - rest).reshape(-1))
    return torch.cat(rows_a), torch.cat(rows_b)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_scales_equal_a_closed_form_solve_of_explicit_matrices_layer_by_layer(kind):
    model, dense = pruned_pair(kind, dtype=torch.float64)
    # in float64 a left-padded row is NaN after the first layer (0 * NaN from its fully masked rows)
    batches = loader(kind, left_pad=False)
    ridge = 1e-3
    fitted = copy.deepcopy(model)
    report = reconstruct(fitted, dense, batches, ridge=ridge, max_scale=1e9)  # a few tokens: any scale
    reference = copy.deepcopy(model)
    state = pruning_state(reference)
    checked = 0
    for index in range(state.geometry.num_layers):
        for kind_ in (HEAD, NEURON):
            entry = [r for r in report.sublayers if r.layer == index and r.kind == kind_][0]
            if entry.units == 0:
                continue
            # a sequence classifier's last layer is fitted on what its head reads: BERT's pooler reads [CLS]
            last = kind == "bert" and index == state.geometry.num_layers - 1
            a, b = _explicit_rows(reference, dense, batches, index, kind_, first_only=last)
            lam = ridge * float((a * a).sum(0).mean())
            eye = torch.eye(a.shape[1], dtype=torch.float64)
            s = torch.linalg.solve(a.t() @ a + lam * eye, a.t() @ b + lam * torch.ones(a.shape[1], dtype=a.dtype))
            before = float((a.sum(1) - b).pow(2).mean())
            after = float((a @ s - b).pow(2).mean())
            assert entry.error_before == pytest.approx(before, rel=1e-6)
            assert entry.skipped is None
            assert entry.error_after == pytest.approx(after, rel=1e-6)
            assert after <= before
            got = fitted_scales(reference, fitted, kind_)[index]
            torch.testing.assert_close(got, s, atol=1e-7, rtol=1e-7)
            # fold the reference's scales into the reference before the next sub-layer
            adapter = state.adapter
            proj = (adapter.attention_output if kind_ == HEAD else adapter.ffn_output)(state.layers[index])
            group = state.geometry.head_dim if kind_ == HEAD else 1
            with torch.no_grad():
                adapter.output_weight(proj).mul_(s.repeat_interleave(group)[None, :])
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "qwen2"])
def test_reconstruction_never_raises_a_sublayer_error_and_reports_it_honestly(kind):
    model, dense = pruned_pair(kind)
    batches = loader(kind, n=4)
    report = reconstruct(model, dense, batches)
    done = [r for r in report.sublayers if not r.skipped]
    assert done, report.summary()
    for r in report.sublayers:
        if r.units == 0:
            assert r.skipped == "no units left"
        elif not r.skipped:
            assert r.error_after <= r.error_before
    assert sum(r.error_after for r in done) < sum(r.error_before for r in done)
    assert report.error_after < report.error_before  # summed over the sub-layers with units (no NaN)
    # the error of the last sub-layer, measured independently, is the reported one
    last = done[-1]
    a, b = _explicit_rows(model, dense, batches, last.layer, last.kind, first_only=last.read_tokens == "head")
    assert float((a.sum(1) - b).pow(2).mean()) == pytest.approx(last.error_after, rel=1e-3)
    assert report.tokens == sum(int(x["attention_mask"].sum()) for x in batches)
    assert "calibration tokens" in report.summary()


def test_batches_add_up_the_same_normal_equations():
    model, dense = pruned_pair("bert", dtype=torch.float64)
    one = loader("bert", n=1, size=8)
    split = [{k: v[i : i + 2] for k, v in one[0].items()} for i in range(0, 8, 2)]
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    reconstruct(a, dense, one)
    reconstruct(b, dense, split)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-10, rtol=1e-9, msg=name)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_folded_scales_equal_scaled_masks_at_run_time_and_reload_bit_for_bit(kind, attn, tmp_path):
    model, dense = pruned_pair(kind, attn=attn)
    batches = loader(kind)
    fitted = copy.deepcopy(model)
    reconstruct(fitted, dense, batches, bias_compensation=kind != "llama")
    state = pruning_state(model)
    adapter, d = state.adapter, state.geometry.head_dim
    handles = []
    for kind_, group in ((HEAD, d), (NEURON, 1)):
        scales = fitted_scales(model, fitted, kind_)
        for layer, s in zip(state.layers, scales):
            proj = (adapter.attention_output if kind_ == HEAD else adapter.ffn_output)(layer)
            factor = s.float().repeat_interleave(group)
            handles.append(proj.register_forward_pre_hook(lambda m, a, f=factor: (a[0] * f,) + a[1:]))
            if kind != "llama":  # the bias moved too: give the run-time model the fitted bias
                with torch.no_grad():
                    proj.bias.copy_(
                        (adapter.attention_output if kind_ == HEAD else adapter.ffn_output)(
                            pruning_state(fitted).layers[state.layers.index(layer)]
                        ).bias
                    )
    inputs = loader(kind, n=1, seed=99)[0]
    torch.testing.assert_close(logits(fitted, inputs), logits(model, inputs), atol=1e-5, rtol=1e-5)
    for h in handles:
        h.remove()
    save_pruned(fitted, tmp_path / "m")
    again = load_pruned(tmp_path / "m", attn_implementation=attn).eval()
    sa, sb = fitted.state_dict(), again.state_dict()
    assert set(sa) == set(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name
    assert torch.equal(logits(again, inputs), logits(fitted, inputs))


def test_bias_compensation_moves_the_bias_only_where_units_were_removed():
    model, dense = pruned_pair("bert")
    report = reconstruct(model, dense, loader("bert"), least_squares=False, bias_compensation=True)
    for r in report.sublayers:
        if r.units and not r.skipped:
            assert r.bias_compensated
            assert r.min_scale == r.max_scale == 1.0
            assert r.error_after <= r.error_before
        elif r.units:  # FLAP's shift can raise a layer's error: then it is not applied
            assert "would not lower" in r.skipped or r.skipped == "no unit was removed here"
    assert any(r.bias_compensated for r in report.sublayers)
    # a model with no bias on its projections: nothing to compensate, so nothing changes
    model, dense = pruned_pair("llama")
    before = copy.deepcopy(model.state_dict())
    report = reconstruct(model, dense, loader("llama"), least_squares=False, bias_compensation=True)
    assert not any(r.bias_compensated for r in report.sublayers)
    assert {r.skipped for r in report.sublayers if r.units} == {"no bias to compensate"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_absurd_scales_are_skipped_and_leave_the_layer_unchanged():
    model, dense = pruned_pair("bert")
    before = copy.deepcopy(model.state_dict())
    report = reconstruct(model, dense, loader("bert"), max_scale=1e-3)
    assert all(r.skipped for r in report.sublayers)
    assert any("max_scale" in r.skipped for r in report.sublayers)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a skip is put down to the data only when the fit had fewer than TOKENS_PER_UNIT tokens per unit
    from hf_gradprune.oneshot.reconstruct import TOKENS_PER_UNIT

    for r in (r for r in report.sublayers if r.units and "max_scale" in r.skipped):
        few = r.tokens < TOKENS_PER_UNIT * r.units
        assert ("too little calibration data" in r.skipped) == few == (r.tokens_needed is not None), r
        assert few or "not for lack of data" in r.skipped
    kinds = {"too little calibration data" in r.skipped for r in report.sublayers if r.units}
    assert kinds == {True, False}  # the [CLS]-only last layer lacks data, the others do not


def _unchanged(model, snapshot):
    return all(torch.equal(snapshot[k], v) for k, v in model.state_dict().items())


def test_bad_input_is_refused_before_any_change():
    model, dense = pruned_pair("bert")
    snap = copy.deepcopy(model.state_dict())
    with pytest.raises(CalibrationError, match="yielded no batch"):
        reconstruct(model, dense, [])
    other = make_bert(hidden_size=32)
    with pytest.raises(ReconstructionError, match="geometries differ"):
        reconstruct(model, other, loader("bert"))
    with pytest.raises(ReconstructionError, match="itself"):
        reconstruct(model, model, loader("bert"))
    narrower = copy.deepcopy(dense)
    g = pruning_state(dense).geometry
    from hf_gradprune import PruningPlan

    prune_model(narrower, PruningPlan(g, [[0]] * g.num_layers, [[0, 1]] * g.num_layers))
    with pytest.raises(ReconstructionError, match="lacks"):
        reconstruct(model, narrower, loader("bert"))
    with pytest.raises(ReconstructionError, match="nothing to do"):
        reconstruct(model, dense, loader("bert"), least_squares=False)
    with pytest.raises(CalibrationError, match="dicts"):
        reconstruct(model, dense, [torch.zeros(2, 3)])
    with pytest.raises(ReconstructionError, match="ridge"):
        reconstruct(model, dense, loader("bert"), ridge=-1)
    assert _unchanged(model, snap)


def test_an_absurd_fit_raises_the_ridge_before_it_gives_up():
    model, dense = pruned_pair("gpt2", dtype=torch.float64)
    batches = loader("gpt2", left_pad=False)  # ~100 tokens for up to 96 scales: wild without a ridge
    strict = reconstruct(copy.deepcopy(model), dense, batches, ridge=0.0, max_scale=3.0, raise_ridge=0)
    wild = [r for r in strict.sublayers if r.skipped and "max_scale" in r.skipped]
    assert wild, strict.summary()
    fitted = copy.deepcopy(model)
    damped = reconstruct(fitted, dense, batches, ridge=0.0, max_scale=3.0, raise_ridge=6)
    rescued = [r for r in damped.sublayers if r.note and "ridge raised" in r.note]
    assert rescued, damped.summary()
    for r in rescued:
        assert r.skipped is None and r.error_after <= r.error_before
        assert max(abs(r.min_scale), abs(r.max_scale)) <= 3.0
    with pytest.raises(ReconstructionError, match="raise_ridge"):
        reconstruct(model, dense, batches, raise_ridge=-1)


def test_max_batches_takes_numpy_integers_and_names_a_bad_count_before_any_change():
    """Issue 20 case 4: a count is an integer >= 1 (numpy's too) or None; anything else is named up front."""
    np = pytest.importorskip("numpy")
    data = loader("bert")
    model, dense = pruned_pair("bert")
    report = reconstruct(model, dense, data, max_batches=np.int64(2))
    assert report.tokens == int(sum(b["attention_mask"].sum() for b in data[:2]))
    model, dense = pruned_pair("bert")
    snap = copy.deepcopy(model.state_dict())
    for bad in (0, -1, 2.5, True):
        with pytest.raises(
            CalibrationError, match=rf"max_batches must be an integer >= 1 or None \(all\), got {bad!r}"
        ):
            reconstruct(model, dense, data, max_batches=bad)
    assert _unchanged(model, snap)


def test_inputs_embeds_without_a_mask_count_every_position():
    """Issue 20 case 10: tokens are counted from inputs_embeds when a batch has no input_ids."""
    model, dense = pruned_pair("bert")
    data = []
    for b in loader("bert", n=2):
        with torch.no_grad():
            data.append({"inputs_embeds": dense.get_input_embeddings()(b["input_ids"])})
    report = reconstruct(model, dense, data)
    assert report.tokens == 2 * 4 * 12 and report.error_after <= report.error_before


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_the_tokens_a_classifier_head_reads_are_those_its_logits_come_from(family):
    """``head_read_tokens`` against the head itself: the logits are the head applied to the last layer's output at
    exactly the marked tokens (one per sequence), with left and right padding."""
    from transformers import GPT2ForSequenceClassification, LlamaForSequenceClassification

    if family == "bert":
        model = make_bert()
    elif family == "gpt2":
        torch.manual_seed(0)
        from conftest import tiny_gpt2_config

        model = GPT2ForSequenceClassification(tiny_gpt2_config(pad_token_id=0, num_labels=3)).eval()
    else:
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(
            make_decoder().config.__class__(**{**make_decoder().config.to_dict(), "num_labels": 3})
        ).eval()
    state = pruning_state(model)
    b = batch("bert" if family == "bert" else "gpt2", seed=3, size=4, length=10)
    if family == "llama":  # left padding too: the rightmost non-pad token is read
        b["input_ids"][0] = torch.cat([torch.zeros(3, dtype=torch.long), b["input_ids"][0, :7]])
        b["attention_mask"][0] = (b["input_ids"][0] != 0).long()
    read = state.adapter.head_read_tokens(model, b)
    assert read.shape == b["input_ids"].shape and read.sum(1).tolist() == [1] * 4
    assert (read & b["attention_mask"].bool()).sum() == 4  # never a padding position
    grabbed = {}
    last = state.layers[-1]
    handle = last.register_forward_hook(lambda m, a, o: grabbed.update(h=o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        handle.remove()
        hidden = grabbed["h"][read]  # [4, hidden]
        if family == "bert":
            expected = model.classifier(model.bert.pooler(hidden[:, None, :]))
        elif family == "gpt2":
            expected = model.score(model.transformer.ln_f(hidden))
        else:
            expected = model.score(model.model.norm(hidden))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # a language model reads every token
    assert state.adapter.head_read_tokens(make_gpt2(), b) is None


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_a_plan_fitted_under_gates_then_cut_equals_the_cut_model_fitted(kind):
    """``reconstruct(model, dense, batches, plan=plan)`` on the uncut model, then the cut, gives the weights of cutting
    first and reconstructing the cut model (the same normal equations; the gated units read 0)."""
    _, dense = pruned_pair(kind, dtype=torch.float64)
    if kind == "bert":
        plan = uneven_plan(dense, zero_layer=0)
    elif kind == "gpt2":
        plan = uneven_plan(dense, zero_layer=1)
    else:
        plan = llama_uneven_plan(dense, zero_layer=0)
    batches = loader(kind, left_pad=False)
    cut_first = copy.deepcopy(dense)
    prune_model(cut_first, plan)
    first = reconstruct(cut_first, dense, batches, max_scale=1e9)
    gated = copy.deepcopy(dense)
    second = reconstruct(gated, dense, batches, max_scale=1e9, plan=plan)
    prune_model(gated, plan)
    fitted = [(r.layer, r.kind, r.units, r.skipped) for r in first.sublayers]
    assert fitted == [(r.layer, r.kind, r.units, r.skipped) for r in second.sublayers]
    assert sum(r.skipped is None for r in first.sublayers) >= 3
    for (name, a), (_, b) in zip(cut_first.state_dict().items(), gated.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9, msg=name)
    for a, b in zip(first.sublayers, second.sublayers):
        assert a.error_before == pytest.approx(b.error_before, rel=1e-9, abs=1e-15, nan_ok=True)
        assert a.error_after == pytest.approx(b.error_after, rel=1e-9, abs=1e-15, nan_ok=True)


def test_a_plan_keeping_a_unit_the_model_lacks_is_refused_before_any_change():
    model, dense = pruned_pair("bert")
    snapshot = copy.deepcopy(model.state_dict())
    with pytest.raises(ReconstructionError, match="plan: layer 0"):
        reconstruct(model, dense, loader("bert"), plan=uneven_plan(dense, zero_layer=1))
    assert _unchanged(model, snapshot)


def test_a_fit_on_too_few_tokens_per_unit_says_how_many_would_be_enough(caplog):
    from hf_gradprune.oneshot.reconstruct import TOKENS_PER_UNIT

    model, dense = pruned_pair("gpt2")
    batches = loader("gpt2", n=1)
    tokens = int(sum(b["attention_mask"].sum() for b in batches))
    with caplog.at_level("WARNING", logger="hf_gradprune.oneshot.reconstruct"):
        report = reconstruct(model, dense, batches)
    for r in report.sublayers:
        if r.units == 0:
            continue
        assert r.tokens == tokens
        if tokens < TOKENS_PER_UNIT * r.units:
            assert r.tokens_needed == TOKENS_PER_UNIT * r.units or (r.skipped and r.tokens_needed > tokens)
        else:
            assert r.tokens_needed is None
    few = [r for r in report.sublayers if r.tokens_needed and not r.skipped]
    assert few and any(f"fewer than {TOKENS_PER_UNIT} tokens per kept unit" in m for m in caplog.messages)
    # with enough tokens nothing is flagged
    plenty = reconstruct(copy.deepcopy(model), dense, loader("gpt2", n=4) * 8)
    assert all(
        r.tokens_needed is None for r in plenty.sublayers if r.units and r.units * TOKENS_PER_UNIT <= plenty.tokens
    )
