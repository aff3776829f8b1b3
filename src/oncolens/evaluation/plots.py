"""The pictures clinicians expect: confusion matrices, ROC curves, reliability, groups, error gallery."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from ..figures import save_figure, subplots

__all__ = ["plot_confusion", "plot_roc", "plot_reliability", "plot_group_breakdown", "plot_gallery"]


def _save(fig, out: Path) -> Path:
    return save_figure(fig, out)


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], out: Path) -> Path:
    """Counts and row-normalised (recall per true class) side by side."""
    n = len(classes)
    fig, axes = subplots(1, 2, figsize=(max(9, 2.2 * n), max(4.2, 0.55 * n + 2.5)))
    rows = confusion.sum(1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros_like(confusion, dtype=float), where=rows > 0)
    for ax, matrix, title, fmt in ((axes[0], confusion, "counts", "d"), (axes[1], normalised, "row-normalised", ".2f")):
        ConfusionMatrixDisplay(matrix, display_labels=list(classes)).plot(ax=ax, values_format=fmt, colorbar=False,
                                                                         cmap="Blues", xticks_rotation=45)
        ax.set_title(f"confusion matrix ({title})")
    return _save(fig, out)


def plot_roc(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], out: Path) -> Path | None:
    """One-vs-rest ROC curve per class (classes absent from the ground truth are skipped)."""
    present = [c for c in range(len(classes)) if 0 < (y == c).sum() < len(y)]
    if not present:
        return None
    fig, ax = subplots(figsize=(6, 5.5))
    targets = present if len(classes) > 2 else [1] if 1 in present else present[:1]
    for c in targets:
        RocCurveDisplay.from_predictions((y == c).astype(int), proba[:, c], name=str(classes[c]), ax=ax)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    ax.set_title("ROC curves (one-vs-rest)")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out)


def plot_reliability(y: np.ndarray, proba: np.ndarray, out: Path, n_bins: int = 10) -> Path:
    """Top-label confidence against accuracy (a calibrated model lies on the diagonal)."""
    confidence = proba.max(1)
    correct = (proba.argmax(1) == y).astype(int)
    fig, (ax, hist) = subplots(2, 1, figsize=(5.5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    if correct.min() != correct.max():
        frac, mean_conf = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
        ax.plot(mean_conf, frac, "o-", label="model")
    else:
        ax.plot([confidence.mean()], [correct.mean()], "o", label="model (all one outcome)")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability diagram")
    ax.legend()
    hist.hist(confidence, bins=n_bins, range=(0, 1), color="grey")
    hist.set_xlabel("confidence of the predicted class")
    hist.set_ylabel("images")
    return _save(fig, out)


def plot_group_breakdown(table: pd.DataFrame, column: str, out: Path) -> Path:
    """Accuracy per value of a grouping column (e.g. magnification, organ), with image counts."""
    fig, ax = subplots(figsize=(max(5, 0.8 * len(table) + 2), 4))
    ax.bar(table[column].astype(str), table["accuracy"], color="tab:blue")
    for i, (acc, n) in enumerate(zip(table["accuracy"], table["n"])):
        ax.text(i, acc + 0.01, f"{acc:.2f}\nn={n}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("accuracy")
    ax.set_title(f"accuracy by {column}")
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    return _save(fig, out)


def plot_gallery(images: Sequence, titles: Sequence[str], out: Path, columns: int = 4,
                 suptitle: str | None = None) -> Path:
    """A grid of images (PIL or arrays) with a title under each."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    fig, axes = subplots(rows, columns, figsize=(3.2 * columns, 3.9 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, title in zip(axes.ravel(), images, titles):
        array = np.asarray(image)
        ax.imshow(array, cmap="gray" if array.ndim == 2 else None)
        ax.set_title(title, fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, out)
