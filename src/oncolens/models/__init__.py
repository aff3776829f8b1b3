"""Networks and their weights: registry, heads, seed CNNs, pretrained weights, bundles, the scoring loop."""

from . import zoo  # noqa: F401  (registers the built-in models)
from .bundle import (
                     Bundle,
                     HierarchyNode,
                     Level,
                     ModelBundle,
                     as_bundle,
                     load_any_bundle,
                     load_bundle,
                     read_bundle_info,
                     register_bundle_kind,
                     save_bundle,
)
from .ensemble import EnsembleBundle, load_ensemble_bundle, save_ensemble_bundle
from .factory import OncoClassifier, apply_freeze, create_model, model_table
from .heads import create_head, list_heads, register_head
from .hierarchy import (
                     HierarchicalBundle,
                     HierarchyTree,
                     load_hierarchical_bundle,
                     resolve_levels,
                     save_hierarchical_bundle,
)
from .pretrained import WeightsUnavailable
from .registry import ModelSpec, get_spec, list_models, register_model
from .scoring import Scores, iter_scores, make_backend, score

__all__ = [
    "EnsembleBundle",
    "load_ensemble_bundle",
    "save_ensemble_bundle",
    "Bundle",
    "HierarchicalBundle",
    "HierarchyNode",
    "HierarchyTree",
    "Level",
    "ModelBundle",
    "ModelSpec",
    "OncoClassifier",
    "Scores",
    "WeightsUnavailable",
    "apply_freeze",
    "as_bundle",
    "create_head",
    "create_model",
    "get_spec",
    "iter_scores",
    "list_heads",
    "list_models",
    "load_any_bundle",
    "load_bundle",
    "load_hierarchical_bundle",
    "make_backend",
    "model_table",
    "read_bundle_info",
    "register_bundle_kind",
    "register_head",
    "register_model",
    "resolve_levels",
    "save_bundle",
    "save_hierarchical_bundle",
    "score",
]
