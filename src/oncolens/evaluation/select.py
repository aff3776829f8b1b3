"""Which manifest rows a bundle is evaluated or explained on, and with which true labels.

One set of rules for ``evaluate``, ``explain-eval`` and ``explain-panels``: rows of the asked split;
labels from the bundle's own level columns (a tree's leaf is the path of its level values) or from
the label column; rows whose label is not a class of the bundle are left out *and reported*, never
silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..data import load_manifest
from ..errors import DataError
from ..models.bundle import ModelBundle, as_bundle

__all__ = ["Selection", "select_rows"]


@dataclass
class Selection:
    """The bundle, the rows to use (``label`` holds each row's true class) and what was left out."""

    bundle: ModelBundle
    frame: pd.DataFrame
    outside: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def outside_labels(self) -> list[str]:
        return sorted(set(self.outside["label"]))


def select_rows(bundle: str | Path | ModelBundle, data: str | Path | pd.DataFrame, split: str | None = "test",
                label_col: str | None = None, keep_outside: bool = False) -> Selection:
    """The rows of ``split`` of ``data`` labelled for ``bundle``.

    ``keep_outside`` keeps rows whose label is not a class of the bundle in ``frame`` (a label map
    will place them); otherwise they move to ``outside`` with a note.
    """
    loaded = as_bundle(bundle)
    frame = data if isinstance(data, pd.DataFrame) else load_manifest(data)
    notes: list[str] = []
    if split and "split" in frame.columns and (frame["split"] != "").any():
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise DataError(f"no images in split {split!r}")
    elif split:
        notes.append(f"the manifest has no split column: using all {len(frame)} images")
    if label_col is not None and label_col not in frame.columns:
        raise DataError(f"label column {label_col!r} not in the manifest ({list(frame.columns)})")
    frame = frame.assign(label=loaded.labels_of(frame, label_col).to_numpy()).reset_index(drop=True)
    if keep_outside:
        return Selection(loaded, frame, frame.head(0), notes)
    inside = frame["label"].isin(loaded.classes)
    outside = frame[~inside].reset_index(drop=True)
    if len(outside):
        shown = ", ".join(f"{label or '(not a path of the tree)'} x{count}"
                          for label, count in outside["label"].value_counts().head(8).items())
        notes.append(f"{len(outside)} image(s) whose label is not a class of this model left out: {shown}")
    return Selection(loaded, frame[inside].reset_index(drop=True), outside, notes)
