"""Leakage-free splits: stratified by label, grouped by patient, deterministic for a seed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from ..errors import DataError

__all__ = ["SplitError", "LeakageReport", "split", "leakage_report", "default_group_column", "resolve_group_column",
           "split_warnings", "assign_folds", "duplicate_clusters", "check_labels", "file_hashes", "with_file_hashes",
           "GROUP_COLUMNS"]


class SplitError(DataError):
    """The manifest cannot be split as asked; the message says why and what to do."""


#: group columns a split uses by default, best first: patient ids, then look-alike groups of embeddings
#: (:mod:`.lookalike`, added by ``oncolens split``/``train``/``cv``), then near-duplicate clusters (proxies)
GROUP_COLUMNS = ("group", "patient", "lookalike", "dup_cluster")


def default_group_column(manifest: pd.DataFrame) -> str | None:
    """``group`` (or ``patient``) when the manifest carries patient ids for every row, else ``dup_cluster``
    (near-duplicate clusters, :func:`duplicate_clusters`) when a caller added it."""
    for col in GROUP_COLUMNS:
        if col in manifest.columns:
            values = manifest[col].astype(str).str.strip()
            if (values != "").all() and values.nunique() > 1:
                return col
            if (values != "").any():
                missing = int((values == "").sum())
                raise SplitError(
                    f"column {col!r} names a patient for some images but {missing} have none; "
                    "fill it for every image, or pass group_col=None to split by image",
                )
    return None


#: near-duplicate clustering (quadratic in the number of images) is skipped above this many images
PROXY_MAX_IMAGES = 20_000


def _auto_group(frame: pd.DataFrame, group_col: str | None) -> tuple[pd.DataFrame, str | None]:
    """The group column for ``group_col`` (``auto``: the manifest's patients; without them, near-duplicate
    clusters when the images have any duplicates, added as a ``dup_cluster`` column)."""
    if group_col != "auto":
        return frame, group_col
    found = default_group_column(frame)
    if found is None and {"sha256", "phash"} & set(frame.columns) and len(frame) <= PROXY_MAX_IMAGES:
        clusters = duplicate_clusters(frame)
        if len(set(clusters)) < len(frame):
            return frame.assign(dup_cluster=clusters), "dup_cluster"
    return frame, found


def check_labels(labels: pd.Series, needed: int) -> None:
    """A clear :class:`SplitError` when ``labels`` have one class, or a class with fewer than ``needed`` images."""
    counts = labels.value_counts()
    if len(counts) < 2:
        only = counts.index[0] if len(counts) else "(none)"
        raise SplitError(
            f"the dataset has only one class ({only!r}, {int(counts.sum()) if len(counts) else 0} images); "
            "a classifier needs at least two classes. Check the layout and --exclude options.",
        )
    rare = counts[counts < needed]
    if len(rare):
        raise SplitError(
            f"classes with too few images to stratify into every split (need >= {needed}): "
            + ", ".join(f"{k}={v}" for k, v in rare.items()),
        )


def _group_holdout(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices so that about ``fraction`` of images (whole groups) are held out, label-stratified."""
    n_groups = len(np.unique(groups))
    smallest_class = int(pd.Series(labels).value_counts().min())
    # scikit-learn needs at least n_splits members per class; a small fraction asks for many folds
    n_splits = int(min(max(2, round(1.0 / fraction)), n_groups, max(2, smallest_class)))
    if n_splits < 2 or n_groups < 2:
        raise SplitError(f"only {n_groups} patient group(s): cannot hold any out without sharing a patient")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:  # the fold whose size is closest to the asked fraction
        best = min(
            folds.split(np.zeros(len(labels)), labels, groups),
            key=lambda tr_te: abs(len(tr_te[1]) / len(labels) - fraction),
        )
    except ValueError as exc:
        raise SplitError(f"cannot hold out {fraction:.0%} of these patients with every class stratified: {exc}") from None
    return _top_up(best, labels, groups, fraction, seed)


#: a held-out part may fall short of its asked size by this share before whole groups are added to it
SIZE_TOLERANCE = 0.1


def _top_up(parts: tuple[np.ndarray, np.ndarray], labels: np.ndarray, groups: np.ndarray, fraction: float,
            seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-out part brought to about ``fraction`` of the images when its fold fell short (a few large
    look-alike groups): whole groups of the kept part are added, in a seeded order, as long as they do not
    overshoot the target and every class keeps images in the kept part."""
    kept, held = parts
    target = fraction * len(labels)
    if len(held) >= (1 - SIZE_TOLERANCE) * target:
        return kept, held
    held_set = set(held.tolist())
    order = np.random.default_rng(seed).permutation(np.unique(groups[kept]))
    for group in order:
        members = np.flatnonzero(groups == group)
        if len(held_set) + len(members) > (1 + SIZE_TOLERANCE) * target:
            continue
        remaining = np.setdiff1d(kept, members)
        if len(np.unique(labels[remaining])) < len(np.unique(labels)):
            continue  # a class would lose its last kept images
        held_set.update(members.tolist())
        kept = remaining
        if len(held_set) >= (1 - SIZE_TOLERANCE) * target:
            break
    return kept, np.array(sorted(held_set))


def split(
    manifest: pd.DataFrame,
    test: float = 0.2,
    val: float = 0.0,
    seed: int = 42,
    group_col: str | None = "auto",
    label_col: str = "label",
) -> pd.DataFrame:
    """Return a copy of ``manifest`` with a ``split`` column (train / val / test).

    With a group column (patient ids), no group appears in two splits; splits are stratified by
    label as well as groups allow. Without patient ids (``auto``), exact and near duplicates are kept in
    one split (a ``dup_cluster`` column says which images were grouped). The same seed gives the same split.
    """
    if not 0 < test < 1 or not 0 <= val < 1 or test + val >= 1:
        raise SplitError(f"fractions must satisfy 0 < test < 1, 0 <= val and test + val < 1 (got test={test}, val={val})")
    if label_col not in manifest.columns:
        raise SplitError(f"label column {label_col!r} not in manifest columns {list(manifest.columns)}")
    frame = manifest.reset_index(drop=True).copy()
    labels = frame[label_col].astype(str)
    n_parts = 2 + (val > 0)
    check_labels(labels, needed=n_parts)
    frame, group_col = _auto_group(frame, group_col)
    split_col = np.array(["train"] * len(frame), dtype=object)
    index = np.arange(len(frame))
    if group_col:
        groups = frame[group_col].astype(str).to_numpy()
        rest, test_idx = _group_holdout(labels.to_numpy(), groups, test, seed)
        split_col[test_idx] = "test"
        if val > 0:
            sub_rest, sub_val = _group_holdout(labels.to_numpy()[rest], groups[rest], val / (1 - test), seed + 1)
            split_col[rest[sub_val]] = "val"
    else:
        try:
            rest, test_idx = train_test_split(index, test_size=test, stratify=labels, random_state=seed)
            split_col[test_idx] = "test"
            if val > 0:
                _, val_idx = train_test_split(
                    rest, test_size=val / (1 - test), stratify=labels.iloc[rest], random_state=seed + 1,
                )
                split_col[val_idx] = "val"
        except ValueError as exc:
            raise SplitError(f"cannot stratify this dataset: {exc}") from exc
    frame["split"] = split_col
    return frame


def assign_folds(manifest: pd.DataFrame, folds: int = 5, seed: int = 42, group_col: str | None = "auto",
                 label_col: str = "label") -> pd.DataFrame:
    """A copy of ``manifest`` with a ``fold`` column (1..folds): stratified by label and, with a patient
    column, grouped so that no patient is in two folds (without one: no near-duplicate cluster, as in
    :func:`split`). Every image is in exactly one fold."""
    if folds < 2:
        raise SplitError(f"cross-validation needs at least 2 folds, got {folds}")
    if label_col not in manifest.columns:
        raise SplitError(f"label column {label_col!r} not in manifest columns {list(manifest.columns)}")
    frame = manifest.reset_index(drop=True).copy()
    labels = frame[label_col].astype(str)
    check_labels(labels, needed=folds)
    frame, group_col = _auto_group(frame, group_col)
    fold = np.zeros(len(frame), dtype=int)
    if group_col:
        groups = frame[group_col].astype(str).to_numpy()
        if len(np.unique(groups)) < folds:
            raise SplitError(f"only {len(np.unique(groups))} patients: cannot make {folds} folds without sharing one")
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(len(frame)), labels, groups)
    else:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(len(frame)), labels)
    for k, (_, test_index) in enumerate(parts, start=1):
        fold[test_index] = k
    frame["fold"] = fold
    return frame


def split_warnings(frame: pd.DataFrame, label_col: str = "label") -> list[str]:
    """Classes missing from a split (grouping by patient can leave a rare class out of test or val):
    metrics for them would be undefined, so the user must know before training."""
    warnings = []
    labels = sorted(frame[label_col].astype(str).unique())
    for part in sorted(set(frame["split"]) - {""}):
        present = set(frame.loc[frame["split"] == part, label_col].astype(str))
        missing = [label for label in labels if label not in present]
        if missing:
            warnings.append(f"split {part!r} has no image of class(es) {', '.join(missing)}: its metrics for them "
                            "will be undefined (more patients of those classes, or another seed, would help)")
    return warnings


@dataclass
class LeakageReport:
    """Images that appear, exactly or nearly, in more than one split."""

    exact: pd.DataFrame
    near: pd.DataFrame
    label_conflicts: pd.DataFrame
    group_col: str | None = None
    shared_groups: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.exact.empty and self.near.empty and not self.shared_groups

    def to_text(self) -> str:
        lines = []
        if self.group_col:
            lines.append(f"patient groups ({self.group_col}) shared across splits: {len(self.shared_groups)}")
        lines.append(f"exact duplicates (same bytes) across splits: {len(self.exact)} pair(s)")
        lines.append(f"near duplicates (perceptual hash) across splits: {len(self.near)} pair(s)")
        lines.append(f"duplicates with different labels (label noise): {len(self.label_conflicts)} pair(s)")
        for title, table in (("exact", self.exact), ("near", self.near)):
            for row in table.head(20).itertuples(index=False):
                lines.append(f"  [{title}] {row.split_a}:{row.path_a} <-> {row.split_b}:{row.path_b}")
        return "\n".join(lines)


def _phash_bits(hex_hashes: pd.Series) -> np.ndarray:
    return np.array([int(h, 16) if h and h != "nan" else 0 for h in hex_hashes], dtype=np.uint64)


def file_hashes(paths: Sequence[str | Path], progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """The SHA-256 of each file's bytes as it is now ("" for a file that cannot be read); ``progress(done,
    total)`` every 256 files and at the end."""
    out = np.full(len(paths), "", dtype=object)
    for i, path in enumerate(paths):
        try:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            out[i] = digest.hexdigest()
        except OSError:
            pass
        if progress is not None and ((i + 1) % 256 == 0 or i + 1 == len(paths)):
            progress(i + 1, len(paths))
    return out


def with_file_hashes(manifest: pd.DataFrame, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """A copy of ``manifest`` whose ``sha256`` column holds its files' hashes as they are now, not as a scan
    once found them (a file replaced since has its stale ``phash`` blanked): what duplicate checks trust."""
    frame = manifest.reset_index(drop=True).copy()
    fresh = file_hashes(frame["path"].astype(str).tolist(), progress=progress)
    if "phash" in frame.columns:
        stale = frame["sha256"].astype(str).to_numpy() != fresh if "sha256" in frame.columns else fresh == ""
        frame.loc[stale, "phash"] = ""
    frame["sha256"] = fresh
    return frame


def duplicate_clusters(manifest: pd.DataFrame, near_threshold: int = 4) -> np.ndarray:
    """A cluster id per row: images joined by exact (sha256) or near (phash Hamming distance <=
    ``near_threshold``) duplication, transitively. The best grouping a dataset without patient ids offers:
    adjacent slices and re-saved copies of one image end up in one cluster, so no fold splits them."""
    frame = manifest.reset_index(drop=True)
    parent = np.arange(len(frame))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    if "sha256" in frame.columns:
        for members in frame.groupby("sha256").indices.values():
            for j in members[1:]:
                if frame["sha256"].iloc[members[0]]:
                    join(int(members[0]), int(j))
    if "phash" in frame.columns and len(frame):
        has = (frame["phash"].astype(str) != "").to_numpy()
        bits = _phash_bits(frame["phash"].astype(str))
        for i in range(len(frame) - 1):
            if not has[i]:
                continue
            close = np.nonzero((np.bitwise_count(bits[i + 1:] ^ bits[i]) <= near_threshold) & has[i + 1:])[0]
            for k in close:
                join(i, i + 1 + int(k))
    return np.array([f"dup-{root(i)}" for i in range(len(frame))], dtype=object)


def leakage_report(split_manifest: pd.DataFrame, near_threshold: int = 4, label_col: str = "label",
                   group_col: str | None = "auto") -> LeakageReport:
    """List exact (sha256) and near (phash Hamming distance <= ``near_threshold``) duplicates across splits,
    and patients (``group_col``; ``auto``: the manifest's patient column) found in more than one split."""
    frame = split_manifest.reset_index(drop=True)
    cols = ["path_a", "split_a", "label_a", "path_b", "split_b", "label_b", "distance"]
    pairs_exact, pairs_near = [], []
    if "sha256" in frame.columns:
        for _, members in frame.groupby("sha256"):
            if len(members) < 2 or members["split"].nunique() < 2:
                continue
            rows = members.to_dict("records")
            for i in range(len(rows)):
                for j in range(i + 1, len(rows)):
                    if rows[i]["split"] != rows[j]["split"]:
                        a, b = rows[i], rows[j]
                        pairs_exact.append((a["path"], a["split"], a[label_col], b["path"], b["split"], b[label_col], 0))
    if "phash" in frame.columns and len(frame):
        bits = _phash_bits(frame["phash"])
        splits = frame["split"].to_numpy()
        sha = frame["sha256"].to_numpy() if "sha256" in frame.columns else np.array([""] * len(frame))
        for i in range(len(frame) - 1):  # O(n^2) in vectorised rows: 10k images take a few seconds
            distance = np.bitwise_count(bits[i + 1 :] ^ bits[i])
            for k in np.nonzero((distance <= near_threshold) & (splits[i + 1 :] != splits[i]))[0]:
                j = i + 1 + int(k)
                if sha[i] and sha[i] == sha[j]:
                    continue  # already an exact duplicate
                a, b = frame.iloc[i], frame.iloc[j]
                pairs_near.append((a["path"], a["split"], a[label_col], b["path"], b["split"], b[label_col], int(distance[k])))
    exact = pd.DataFrame(pairs_exact, columns=cols)
    near = pd.DataFrame(pairs_near, columns=cols)
    both = pd.concat([exact, near], ignore_index=True)
    conflicts = both[both["label_a"] != both["label_b"]].reset_index(drop=True)
    group_col = resolve_group_column(frame, group_col)
    shared: list[str] = []
    if group_col:
        per_group = frame.groupby(group_col)["split"].nunique()
        shared = sorted(per_group[per_group > 1].index.astype(str))
    return LeakageReport(exact=exact, near=near, label_conflicts=conflicts, group_col=group_col, shared_groups=shared)


def resolve_group_column(frame: pd.DataFrame, group_col: str | None = "auto") -> str | None:
    """The patient column a split of ``frame`` uses for ``group_col`` (``auto``: the manifest's own, if any)."""
    return default_group_column_safe(frame) if group_col == "auto" else group_col


def default_group_column_safe(frame: pd.DataFrame) -> str | None:
    try:
        return default_group_column(frame)
    except SplitError:
        return None
