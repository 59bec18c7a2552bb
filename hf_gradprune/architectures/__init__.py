"""Registry of model-family adapters. Adding a family: one module here and one ``register_adapter`` line."""

from __future__ import annotations

from .base import FamilyAdapter, Geometry
from .bert import BertFamilyAdapter
from .gpt2 import GPT2Adapter

_REGISTRY: dict[str, FamilyAdapter] = {}


def register_adapter(adapter: FamilyAdapter) -> None:
    """Make ``adapter`` handle each of its ``model_types``."""
    for model_type in adapter.model_types:
        _REGISTRY[model_type] = adapter


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(model_or_config) -> FamilyAdapter:
    """The adapter for a model (or config); a clear error for an unsupported ``model_type``."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise UnsupportedModelError(
            f"hf_gradprune does not support model_type {model_type!r} "
            f"({type(model_or_config).__name__}). Supported model types: {', '.join(supported_model_types())}. "
            "To add a family, write an adapter in hf_gradprune/architectures/ and register it."
        )
    return _REGISTRY[model_type]


class UnsupportedModelError(ValueError):
    """The model's family has no registered adapter."""


register_adapter(BertFamilyAdapter())
register_adapter(GPT2Adapter())

__all__ = [
    "FamilyAdapter",
    "Geometry",
    "UnsupportedModelError",
    "get_adapter",
    "register_adapter",
    "supported_model_types",
]
