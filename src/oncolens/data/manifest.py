"""Read and write manifests (CSV, one row per image) without pandas guessing types."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import DataError, InputNotFound
from ..files import atomic_write

__all__ = ["load_manifest", "save_manifest", "STRING_COLUMNS"]

#: Columns kept as text even when they look numeric (labels such as "0"/"1", patient ids).
STRING_COLUMNS = ("path", "label", "group", "patient", "split", "sha256", "phash", "mask_path", "source_split")


def load_manifest(path: str | Path) -> pd.DataFrame:
    """Load a manifest CSV; relative image paths are resolved against the manifest's folder."""
    path = Path(path)
    if not path.exists():
        raise InputNotFound(f"manifest not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} is empty: not a manifest (it needs 'path' and 'label' columns)") from None
    if "path" not in frame.columns or "label" not in frame.columns:
        raise DataError(f"{path} is not a manifest: it needs 'path' and 'label' columns, has {list(frame.columns)}")
    base = path.resolve().parent

    def absolute(p: str) -> str:
        return p if not p or Path(p).is_absolute() else str(base / p)

    frame["path"] = frame["path"].map(absolute)
    if "mask_path" in frame.columns:
        frame["mask_path"] = frame["mask_path"].map(absolute)
    for col in ("width", "height"):
        if col in frame.columns:
            frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def save_manifest(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a manifest atomically (a crash never leaves half a file)."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
