"""Explanations: CAMs (pytorch-grad-cam), attributions (captum), contours, trust metrics, panels."""

from .._lazy import lazy_package
from . import attention, attributions, cams  # noqa: F401  (registers the built-in methods)

__all__ = [
    "Composition",
    "Localisation",
    "compose",
    "evaluate_explanations",
    "explain_panels",
    "explain_to_files",
    "localise",
    "ExplainOptions",
    "Explanation",
    "Region",
    "draw_regions",
    "explain",
    "extract_regions",
    "find_target_layer",
    "get_method",
    "list_methods",
    "overlay_heatmap",
    "register_method",
    "threshold_map",
]

lazy_package(__name__, {
    "Region": ".contours",
    "draw_regions": ".contours",
    "extract_regions": ".contours",
    "overlay_heatmap": ".contours",
    "threshold_map": ".contours",
    "evaluate_explanations": ".evaluate",
    "find_target_layer": ".layers",
    "Composition": ".outputs",
    "Localisation": ".outputs",
    "compose": ".outputs",
    "explain_to_files": ".outputs",
    "localise": ".outputs",
    "explain_panels": ".panels",
    "ExplainOptions": ".registry",
    "Explanation": ".registry",
    "explain": ".registry",
    "get_method": ".registry",
    "list_methods": ".registry",
    "register_method": ".registry",
})
