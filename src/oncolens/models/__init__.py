"""Networks and their weights: registry, heads, seed CNNs, pretrained weights, bundles."""

from .bundle import Bundle, load_bundle, save_bundle
from .hierarchy import (
    HierarchicalBundle,
    HierarchyTree,
    Level,
    load_any_bundle,
    load_hierarchical_bundle,
    resolve_levels,
    save_hierarchical_bundle,
)
from .heads import create_head, list_heads, register_head
from .registry import (
    ModelSpec,
    OncoClassifier,
    apply_freeze,
    create_model,
    get_spec,
    list_models,
    model_table,
    register_model,
)
from .weights import WeightsUnavailable

__all__ = [
    "Bundle",
    "HierarchicalBundle",
    "HierarchyTree",
    "Level",
    "load_any_bundle",
    "load_hierarchical_bundle",
    "resolve_levels",
    "save_hierarchical_bundle",
    "load_bundle",
    "save_bundle",
    "ModelSpec",
    "OncoClassifier",
    "WeightsUnavailable",
    "apply_freeze",
    "create_head",
    "create_model",
    "get_spec",
    "list_heads",
    "list_models",
    "model_table",
    "register_head",
    "register_model",
]
