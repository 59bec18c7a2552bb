"""Registry of model-family adapters. Adding a family: one module here and one ``register_adapter`` line."""

from __future__ import annotations

from .base import FamilyAdapter, Geometry, mha_ffn_costs
from .bert import BertFamilyAdapter
from .gpt2 import GPT2Adapter
from .llama import LlamaFamilyAdapter

_REGISTRY: dict[str, FamilyAdapter] = {}


def register_adapter(adapter: FamilyAdapter, *, replace: bool = False) -> None:
    """Make ``adapter`` handle each of its ``model_types``.

    A model type that already has an adapter is refused unless ``replace=True`` (two adapters for one
    family would otherwise win by import order, silently).
    """
    if not isinstance(adapter, FamilyAdapter):
        raise TypeError(f"register_adapter needs a FamilyAdapter instance, got {type(adapter).__name__}")
    types = adapter.model_types
    if isinstance(types, str) or not types or not all(isinstance(t, str) for t in types):
        raise ValueError(f"{type(adapter).__name__}.model_types must be a non-empty tuple of model_type strings")
    taken = [t for t in types if t in _REGISTRY]
    if taken and not replace:
        owners = ", ".join(f"{t!r} ({type(_REGISTRY[t]).__name__})" for t in taken)
        raise ValueError(f"model types already have an adapter: {owners}; pass replace=True to replace it")
    for model_type in types:
        _REGISTRY[model_type] = adapter


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(model_or_config) -> FamilyAdapter:
    """The adapter for a model, a config or a ``model_type`` string; a clear error for an unsupported one."""
    if isinstance(model_or_config, str):
        model_type, what = model_or_config, ""
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type, what = getattr(config, "model_type", None), f" ({type(model_or_config).__name__})"
    if model_type not in _REGISTRY:
        raise UnsupportedModelError(
            f"hf_gradprune does not support model_type {model_type!r}{what}. "
            f"Supported model types: {', '.join(supported_model_types())}. "
            "To add a family, write an adapter in hf_gradprune/architectures/ and register it."
        )
    return _REGISTRY[model_type]


class UnsupportedModelError(ValueError):
    """The model's family has no registered adapter."""


register_adapter(BertFamilyAdapter())
register_adapter(GPT2Adapter())
register_adapter(LlamaFamilyAdapter())

__all__ = [
    "FamilyAdapter",
    "Geometry",
    "UnsupportedModelError",
    "get_adapter",
    "mha_ffn_costs",
    "register_adapter",
    "supported_model_types",
]
