"""Dataset layouts, each registered by name; importing this package registers the built-in ones."""

from . import breakhis, csv, folder, idc, phantoms  # noqa: F401  (registration side effect)
from .base import (
    MASK_SUFFIX,
    Candidate,
    Layout,
    LayoutOptions,
    detect_layout,
    get_layout,
    iter_image_files,
    expand_image_paths,
    list_layouts,
    register_layout,
)
from .breakhis import parse_breakhis_name

__all__ = [
    "MASK_SUFFIX",
    "Candidate",
    "Layout",
    "LayoutOptions",
    "detect_layout",
    "get_layout",
    "iter_image_files",
    "expand_image_paths",
    "list_layouts",
    "register_layout",
    "parse_breakhis_name",
]
