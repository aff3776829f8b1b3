"""Scan a dataset into a manifest: one row per usable image, one report line per skipped file.

The scan streams: rows are written as they are found, and only per-class counters stay in memory.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import pandas as pd

from ..errors import InputNotFound
from ..files import atomic_path
from .imageio import DEFAULT_MAX_PIXELS, UnreadableImage, decode_image
from .layouts import MASK_SUFFIX, Candidate, LayoutOptions, detect_layout, get_layout

__all__ = ["ScanRecord", "SkippedFile", "ScanSummary", "ScanResult", "iter_scan", "scan", "scan_to_csv", "IMAGE_COLUMNS"]

#: Columns every manifest has after the layout's own label columns.
IMAGE_COLUMNS = ["width", "height", "mode", "original_mode", "format", "sha256", "phash", "mask_path"]


@dataclass
class ScanRecord:
    row: dict[str, object]


@dataclass
class SkippedFile:
    path: str
    reason: str

    def __post_init__(self) -> None:  # a name that is not valid UTF-8 is shown with a replacement character
        self.path = os.fsencode(self.path).decode("utf-8", "replace")


@dataclass
class ScanSummary:
    """What a user wants to know about a dataset before training on it."""

    layout: str
    columns: list[str]
    n_images: int = 0
    class_counts: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    groups: set = field(default_factory=set)
    skipped: list[SkippedFile] = field(default_factory=list)
    empty_class_folders: list[str] = field(default_factory=list)

    def add(self, row: dict[str, object]) -> None:
        self.n_images += 1
        self.class_counts[str(row["label"])] += 1
        self.sizes[(int(row["width"]), int(row["height"]))] += 1
        self.modes[str(row["original_mode"])] += 1
        if row.get("group"):
            self.groups.add(str(row["group"]))

    def to_dict(self) -> dict[str, object]:
        return {
            "layout": self.layout,
            "n_images": self.n_images,
            "n_skipped": len(self.skipped),
            "n_groups": len(self.groups),
            "class_counts": dict(sorted(self.class_counts.items())),
            "sizes": {f"{w}x{h}": n for (w, h), n in self.sizes.most_common(10)},
            "n_distinct_sizes": len(self.sizes),
            "modes": dict(self.modes),
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "empty_class_folders": self.empty_class_folders,
        }


@dataclass
class ScanResult:
    manifest: pd.DataFrame
    summary: ScanSummary

    @property
    def skipped(self) -> list[SkippedFile]:
        return self.summary.skipped


def _inspect(candidate: Candidate, max_pixels: int) -> ScanRecord | SkippedFile:
    """Decode one candidate fully (to catch truncation) and measure it."""
    if candidate.problem:
        return SkippedFile(str(candidate.path), candidate.problem)
    try:
        data = candidate.path.read_bytes()
    except FileNotFoundError:
        return SkippedFile(str(candidate.path), "file not found")
    except OSError as exc:
        return SkippedFile(str(candidate.path), f"cannot read file ({exc.strerror or exc})")
    try:
        loaded = decode_image(data, max_pixels=max_pixels, name=candidate.path.name)
    except UnreadableImage as exc:
        return SkippedFile(str(candidate.path), exc.reason)
    row = dict(candidate.fields)
    if loaded.meta.get("patient_id") and not row.get("group"):
        row["group"] = loaded.meta["patient_id"]
    mask = candidate.path.with_name(candidate.path.stem + MASK_SUFFIX)
    row.update(
        path=str(candidate.path.resolve()),
        width=loaded.width,
        height=loaded.height,
        mode=loaded.image.mode,
        original_mode=loaded.original_mode,
        format=loaded.format,
        sha256=hashlib.sha256(data).hexdigest(),
        phash=str(imagehash.phash(loaded.image)),
        mask_path=str(mask.resolve()) if mask.exists() else "",
    )
    return ScanRecord(row)


def _chunks(items: Iterator[Candidate], size: int) -> Iterator[list[Candidate]]:
    chunk: list[Candidate] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _empty_class_folders(root: Path, exclude: Sequence[str]) -> list[str]:
    """Folders under ``root`` holding nothing (hidden and excluded ones skipped; unreadable ones are not
    empty: the walk of the scan reports them)."""
    if not root.is_dir():
        return []
    lowered = {e.lower() for e in exclude}
    empty = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda exc: None):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in lowered)
        if Path(dirpath) != root and not dirnames and not filenames:
            empty.append(os.fsencode(dirpath).decode("utf-8", "replace"))
    return sorted(empty)


def iter_scan(
    root: str | Path,
    layout: str = "auto",
    options: LayoutOptions | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 2,
) -> tuple[ScanSummary, Iterator[ScanRecord | SkippedFile]]:
    """Start a scan: the summary (filled as the iterator is consumed) and an iterator of results."""
    root = Path(root)
    if not root.exists():
        raise InputNotFound(f"dataset path does not exist: {root}")
    options = options or LayoutOptions()
    chosen = detect_layout(root) if layout == "auto" else get_layout(layout)
    columns = ["path", *chosen.columns(root, options)]
    columns += [c for c in IMAGE_COLUMNS if c not in columns]
    if "group" not in columns:
        columns.append("group")  # DICOM files may carry a PatientID even in a folder layout
    summary = ScanSummary(layout=chosen.name, columns=columns)
    summary.empty_class_folders = _empty_class_folders(root, options.exclude)

    def results() -> Iterator[ScanRecord | SkippedFile]:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for chunk in _chunks(chosen.candidates(root, options), 64):
                for result in pool.map(lambda c: _inspect(c, max_pixels), chunk):
                    if isinstance(result, ScanRecord):
                        summary.add(result.row)
                    else:
                        summary.skipped.append(result)
                    yield result

    return summary, results()


def scan_to_csv(
    root: str | Path,
    out: str | Path,
    layout: str = "auto",
    options: LayoutOptions | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 2,
) -> ScanSummary:
    """Scan ``root`` and stream the manifest to ``out`` (written atomically); return the summary."""
    summary, results = iter_scan(root, layout, options, max_pixels=max_pixels, workers=workers)
    with atomic_path(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=summary.columns, extrasaction="ignore", restval="")
        writer.writeheader()
        for result in results:
            if isinstance(result, ScanRecord):
                writer.writerow(result.row)
    return summary


def scan(
    root: str | Path,
    layout: str = "auto",
    options: LayoutOptions | None = None,
    *,
    exclude: Sequence[str] = (),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = 2,
) -> ScanResult:
    """Scan ``root`` into an in-memory manifest (a DataFrame) plus the summary and skipped files.

    >>> result = scan("phantoms/")            # doctest: +SKIP
    >>> result.manifest.label.value_counts()  # doctest: +SKIP
    """
    if options is None:
        options = LayoutOptions(exclude=tuple(exclude))
    summary, results = iter_scan(root, layout, options, max_pixels=max_pixels, workers=workers)
    rows = [{c: r.row.get(c, "") for c in summary.columns} for r in results if isinstance(r, ScanRecord)]
    manifest = pd.DataFrame(rows, columns=summary.columns)
    return ScanResult(manifest=manifest, summary=summary)
