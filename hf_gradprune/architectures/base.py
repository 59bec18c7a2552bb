"""What every model-family adapter provides: where heads and FFN neurons live, and how to cut them."""

from __future__ import annotations

import abc
import numbers
import operator
from collections import Counter
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..units import UnitCosts


@dataclass(frozen=True)
class Geometry:
    """The unpruned shape of a model's transformer blocks, which plans and scores are expressed against.

    ``num_heads`` counts query heads. ``num_key_value_heads`` (grouped-query attention) defaults to
    ``num_heads``, so geometries, plans and scores saved before it existed read the same. Query head ``q``
    reads key/value head ``q // group_size``. ``features`` names the optional parts of a family's block
    that change what a unit costs (e.g. ``"qkv_bias"``); only the family's adapter reads them.
    """

    model_type: str
    num_layers: int
    num_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    num_key_value_heads: int | None = None
    features: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.model_type, str) or not self.model_type:
            raise ValueError(f"model_type must be a model type name such as 'bert', got {self.model_type!r}")
        for name in ("num_layers", "num_heads", "head_dim", "hidden_size", "intermediate_size", "num_key_value_heads"):
            value = getattr(self, name)
            if name == "num_key_value_heads" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
            object.__setattr__(self, name, int(value))  # a NumPy integer would not save as JSON
        if not isinstance(self.features, (list, tuple)) or not all(isinstance(f, str) for f in self.features):
            raise ValueError(f"features must be a list of names, got {self.features!r}")
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_heads)
        object.__setattr__(self, "features", tuple(sorted(self.features)))  # JSON gives a list
        kv = self.num_key_value_heads
        if not (isinstance(kv, int) and kv >= 1 and self.num_heads % kv == 0):
            raise ValueError(
                f"num_key_value_heads must divide num_heads ({self.num_heads}), got {self.num_key_value_heads!r}"
            )

    def kept_units(self, heads, neurons) -> tuple[list[list[int]], list[list[int]]]:
        """Per layer, the kept original head and neuron ids, sorted plain ints; ``ValueError`` unless there is one
        list per layer, the ids are integers (Python, NumPy or torch; 1.7 is refused, not truncated), distinct and
        in range, and every key/value head kept keeps equally many query heads. ``PruningPlan`` and the reader of
        a saved record (``state``) both check with it."""
        heads = [_unit_ids(h, "head", layer) for layer, h in enumerate(_per_layer(heads, "head"))]
        neurons = [_unit_ids(n, "neuron", layer) for layer, n in enumerate(_per_layer(neurons, "neuron"))]
        if len(heads) != self.num_layers or len(neurons) != self.num_layers:
            raise ValueError(f"a plan for this model needs {self.num_layers} layers of heads and neurons")
        for layer, (h, n) in enumerate(zip(heads, neurons)):
            if len(set(h)) != len(h) or any(not 0 <= i < self.num_heads for i in h):
                raise ValueError(f"layer {layer}: head ids must be distinct and in [0, {self.num_heads}), got {h}")
            if len(set(n)) != len(n) or any(not 0 <= i < self.intermediate_size for i in n):
                raise ValueError(f"layer {layer}: neuron ids must be distinct and in [0, {self.intermediate_size})")
            per_group = Counter(i // self.group_size for i in h)
            if len(set(per_group.values())) > 1:
                counts = ", ".join(f"group {k}: {c}" for k, c in sorted(per_group.items()))
                raise ValueError(
                    f"layer {layer}: every key/value head kept must keep the same number of query heads "
                    f"(repeat_kv shares each key/value head among equally many), so the query heads kept must be a "
                    f"multiple of the key/value heads kept; this plan keeps {counts} (query head q reads "
                    f"key/value head q // {self.group_size})"
                )
        return heads, neurons

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.num_heads // self.num_key_value_heads

    def to_dict(self) -> dict:
        out = asdict(self)
        out["features"] = list(self.features)
        return out


class FamilyAdapter(abc.ABC):
    """Knows one family's module and attribute names and costs; nothing else in the package does.

    Subclasses set ``model_types`` and ``ffn_config_attr`` and implement every abstract method below.
    Cutting works in place on the existing modules (see ``slice_param_``), so hooks and references survive.
    """

    model_types: tuple[str, ...] = ()
    ffn_config_attr: str = "intermediate_size"
    # the ``onnxruntime.transformers.optimizer`` model_type whose fusions fit the family's graphs, if any
    onnx_optimizer_model_type: str | None = None

    # --- geometry -------------------------------------------------------------------------------
    @abc.abstractmethod
    def geometry(self, config) -> Geometry:
        """The unpruned shape, from the config alone."""

    @abc.abstractmethod
    def layers(self, model: nn.Module) -> list[nn.Module]:
        """The transformer blocks, in order."""

    # --- costs: plain numbers, so plans need no model ---------------------------------------------
    @abc.abstractmethod
    def unit_costs(self, geometry: Geometry, seq_len: int) -> UnitCosts:
        """Parameters and per-token FLOPs (attention scores over ``seq_len`` keys) of one head and one
        neuron, and the parameters per layer that no pruning removes."""

    # --- hook points: their *inputs* are the head contexts / FFN activations -------------------
    @abc.abstractmethod
    def attention_output(self, layer: nn.Module) -> nn.Module:
        """The attention's output projection."""

    @abc.abstractmethod
    def ffn_output(self, layer: nn.Module) -> nn.Module:
        """The FFN's output projection."""

    # --- reconstruction: where each sub-layer's result joins the residual stream --------------------
    def residual_output(self, layer: nn.Module, kind: str) -> tuple[nn.Module, str]:
        """``(module, "input" | "output")``: the module whose first input (or whose output) is the residual
        stream right after the attention (``kind`` ``HEAD``) or FFN (``NEURON``) sub-layer, before any
        post-norm: residual + the output projection's result. ``reconstruct.py`` fits the kept units'
        scales there. Families that do not say it cannot be reconstructed (pruning still works)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not say where its sub-layers join the residual stream "
            "(FamilyAdapter.residual_output), so its models cannot be reconstructed"
        )

    def head_read_tokens(self, model: nn.Module, batch: dict) -> torch.Tensor | None:
        """``[batch, seq]`` bool mask of the tokens whose last-layer output a sequence-classification head reads, or
        None when every token's output is read (language models, token classifiers). Here, as transformers' decoder
        classifiers pool: the rightmost token that is not the pad token (the last one when the config has no pad
        id). Reconstruction fits the last layer on these tokens only: nothing else of that layer reaches the head."""
        if not type(model).__name__.endswith("ForSequenceClassification"):
            return None
        ids = batch.get("input_ids")
        mask = batch.get("attention_mask")
        if ids is None and mask is None:
            return None  # inputs_embeds alone: no way to tell padding apart, so every token counts
        shape = (ids if ids is not None else mask).shape
        pad = getattr(model.config.get_text_config(), "pad_token_id", None)
        if ids is None or pad is None:
            last = torch.full(
                (shape[0],), shape[1] - 1, dtype=torch.long, device=(ids if ids is not None else mask).device
            )
        else:
            positions = torch.arange(shape[1], device=ids.device)
            last = (positions * (ids != pad).to(torch.long)).argmax(-1)
        read = torch.zeros(shape, dtype=torch.bool, device=last.device)
        read[torch.arange(shape[0], device=last.device), last] = True
        return read

    def output_weight(self, module: nn.Module) -> torch.Tensor:
        """The output projection's weight as an ``[out, in]`` view (one column per input feature), so that
        scaling a column in place scales that feature's contribution. ``nn.Linear`` is already so."""
        return module.weight if self.weight_in_axis(module) == 1 else module.weight.t()

    # --- weight sparsity: the block's matrices, zeroed weight by weight -----------------------------
    def weight_modules(self, layer: nn.Module) -> dict[str, nn.Module]:
        """The block's linear layers whose weights weight sparsity zeroes, by name within the block, in module
        order. Every ``nn.Linear`` by default; a family whose projections are another class says so."""
        return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}

    def weight_in_axis(self, module: nn.Module) -> int:
        """The axis of ``module.weight`` that runs over input features: 1 for ``nn.Linear`` (``[out, in]``).
        N:M sparsity groups weights along it (the axis sparse tensor cores accelerate)."""
        return 1

    # --- live sizes ------------------------------------------------------------------------------
    @abc.abstractmethod
    def num_heads(self, layer: nn.Module) -> int:
        """Heads the layer has now."""

    @abc.abstractmethod
    def ffn_width(self, layer: nn.Module) -> int:
        """FFN neurons the layer has now."""

    def num_kv_heads(self, layer: nn.Module) -> int:
        """Key/value heads the layer has now; families where each head has its own keep the default."""
        return self.num_heads(layer)

    def kv_head_sq_norms(self, layer: nn.Module, head_dim: int) -> torch.Tensor:
        """Sum of squares of each live key/value head's own weights (grouped-query attention), ``[kv heads]``."""
        return torch.zeros(self.num_kv_heads(layer))

    # --- a stock config for a uniform plan ------------------------------------------------------
    def uniform_head_config(self, geometry: Geometry, heads: int, kv_heads: int) -> dict | None:
        """Config attributes that make a freshly built model have ``heads`` query heads and ``kv_heads``
        key/value heads, of the original size, in every layer; None when the family's config cannot say it
        (BERT and GPT-2 derive the head size from the head count). Then a uniform plan is a stock model."""
        return None

    # --- magnitude baseline ----------------------------------------------------------------------
    @abc.abstractmethod
    def head_sq_norms(self, layer: nn.Module, head_dim: int) -> torch.Tensor:
        """Sum of squares of each live head's weights, ``[heads]``."""

    @abc.abstractmethod
    def neuron_sq_norms(self, layer: nn.Module) -> torch.Tensor:
        """Sum of squares of each live neuron's weights, ``[neurons]``."""

    # --- surgery (positions are indices into the layer's current units) ------------------------
    @abc.abstractmethod
    def keep_heads(self, layer: nn.Module, keep: torch.Tensor, head_dim: int) -> None:
        """Keep the heads at positions ``keep``, in place. A layer left with none must still run: where the
        stock forward cannot, give the block ``modeling_gradprune.make_block_empty`` with an ``EmptyBlock``."""

    @abc.abstractmethod
    def keep_neurons(self, layer: nn.Module, keep: torch.Tensor) -> None:
        """Keep the FFN neurons at positions ``keep``, in place; a layer left with none must still run."""


def geometry_from_config(config, intermediate_size: int, **extra) -> Geometry:
    """A geometry from the config's standard names (each family's ``attribute_map`` translates its own,
    e.g. GPT-2's ``n_layer``); the FFN width is the family's to say. ``extra``: further ``Geometry`` fields."""
    fields = {
        "model_type": config.model_type,
        "num_layers": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "head_dim": config.hidden_size // config.num_attention_heads,
        "hidden_size": config.hidden_size,
        "intermediate_size": intermediate_size,
    }
    return Geometry(**{**fields, **extra})


def mha_ffn_costs(
    geometry: Geometry, seq_len: int, *, bias: bool, norm_params: int, ffn_matrices: int = 2
) -> UnitCosts:
    """Unit costs of the common block: multi-head attention (q, k, v, output projections of equal width)
    and an FFN of ``ffn_matrices`` hidden-sized matrices (2 plain, 3 gated), with or without biases.

    ``norm_params``: the layer's norm parameters. FLOPs count 2 per multiply-add, matmuls only.
    """
    h, d = geometry.hidden_size, geometry.head_dim
    return UnitCosts(
        # a head owns d columns of q, k, v (and their biases) and d rows of the output projection
        head_params=4 * h * d + (3 * d if bias else 0),
        # a neuron owns one hidden-sized vector per FFN matrix, and a bias in each input projection
        neuron_params=ffn_matrices * h + (ffn_matrices - 1 if bias else 0),
        # the two output projections' biases stay, whatever is cut
        fixed_params=(2 * h if bias else 0) + norm_params,
        # projections, plus QK^T and AV over seq_len keys
        head_flops=2 * 4 * h * d + 2 * 2 * seq_len * d,
        neuron_flops=2 * ffn_matrices * h,
    )


def head_columns(keep: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Feature indices of the kept heads in a ``[heads * head_dim]`` axis."""
    offsets = torch.arange(head_dim, device=keep.device)
    return (keep[:, None] * head_dim + offsets).reshape(-1)


@torch.no_grad()
def slice_param_(module: nn.Module, name: str, dim: int, index: torch.Tensor) -> None:
    """Keep ``index`` along ``dim`` of ``module.<name>``, in place on the module.

    We slice parameters instead of calling ``transformers.pytorch_utils.prune_linear_layer`` because
    that returns a *new* module: hooks registered by a live ``ImportanceScorer`` and references held by
    wrappers would then point at a dead module. Dtype, device and ``requires_grad`` are kept.
    """
    old = getattr(module, name)
    if old is None:
        return
    new = old.detach().index_select(dim, index.to(old.device)).clone()
    setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))


def grouped_sq_norm(weight: torch.Tensor, dim: int, groups: int) -> torch.Tensor:
    """Sum of squares of ``weight`` split into ``groups`` equal, contiguous chunks along ``dim``."""
    w = weight.detach().float().movedim(dim, 0)
    if groups == 0:
        return w.new_zeros(0)
    return w.reshape(groups, -1).pow(2).sum(1)


def freeze_unused(module: nn.Module) -> None:
    """Freeze a module (the pre-norm of a block made empty) that feeds nothing any more.

    No gradient will reach it, and DDP (without find_unused_parameters) would fail on a trainable parameter
    that gets none. Marked so the saved structure records it and every loader freezes it again.
    """
    module._gradprune_frozen = True
    for p in module.parameters():
        p.requires_grad_(False)


def _per_layer(per_layer, kind: str) -> list:
    if isinstance(per_layer, (str, bytes, dict)) or not hasattr(per_layer, "__iter__"):
        raise ValueError(
            f"a plan's {kind}s must be a list of one list of kept {kind} ids per layer, got {per_layer!r:.80}"
        )
    return list(per_layer)


def _unit_ids(ids, kind: str, layer: int) -> list[int]:
    """One layer's kept ids, sorted: Python, NumPy or torch integers; anything else (e.g. 1.7) is refused
    rather than truncated."""
    try:
        items = list(ids)
        if any(isinstance(i, bool) for i in items):
            raise TypeError
        return sorted(operator.index(i) for i in items)
    except TypeError:
        raise ValueError(f"layer {layer}: {kind} ids must be a list of integers, got {ids!r}") from None
