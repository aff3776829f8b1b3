"""Images in, manifests out: read, scan, split, load and generate data."""

from .dataset import ManifestDataset, class_names_of, collate_skip_none
from .imageio import LoadedImage, UnreadableImage, decode_image, read_image
from .layouts import LayoutOptions, get_layout, list_layouts, register_layout
from .manifest import load_manifest, save_manifest
from .phantoms import generate as generate_phantoms
from .scan import ScanResult, scan, scan_to_csv
from .split import LeakageReport, SplitError, leakage_report, split
from .transforms import Augmentation, Preprocessing, build_transforms

__all__ = [
    "Augmentation",
    "LayoutOptions",
    "LeakageReport",
    "LoadedImage",
    "ManifestDataset",
    "Preprocessing",
    "ScanResult",
    "SplitError",
    "UnreadableImage",
    "build_transforms",
    "class_names_of",
    "collate_skip_none",
    "decode_image",
    "generate_phantoms",
    "get_layout",
    "leakage_report",
    "list_layouts",
    "load_manifest",
    "read_image",
    "register_layout",
    "save_manifest",
    "scan",
    "scan_to_csv",
    "split",
]
