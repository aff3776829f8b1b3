"""Explanations: CAMs (pytorch-grad-cam), attributions (captum), contours, trust metrics, panels."""

from . import attributions, cams  # noqa: F401  (registers the built-in methods)
from .contours import Region, draw_regions, extract_regions, overlay_heatmap, threshold_map
from .evaluate import evaluate_explanations
from .layers import find_target_layer
from .outputs import Composition, Localisation, compose, explain_to_files, localise
from .panels import explain_panels
from .registry import ExplainOptions, Explanation, explain, get_method, list_methods, register_method

__all__ = ["Composition", "Localisation", "compose", "evaluate_explanations", "explain_panels", "explain_to_files", "localise",
           "ExplainOptions", "Explanation", "Region", "draw_regions", "explain", "extract_regions",
           "find_target_layer", "get_method", "list_methods", "overlay_heatmap", "register_method", "threshold_map"]
