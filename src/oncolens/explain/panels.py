"""Panels of correct and wrong predictions per class with their explanations (seed 004's auto panels)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import read_image
from ..errors import DataError, renamed_keyword
from ..evaluation.plots import plot_gallery
from ..evaluation.select import select_rows
from ..files import safe_name
from ..models.bundle import ModelBundle
from ..registry import Registry
from .outputs import compose
from .registry import ExplainOptions, explain

__all__ = ["explain_panels", "select_cases", "top_tile_panel"]


def select_cases(frame: pd.DataFrame, proba: np.ndarray, classes: list[str], per_class: int,
                 predicted: np.ndarray | None = None) -> pd.DataFrame:
    """Per true class: the ``per_class`` most confident correct and most confident wrong predictions.

    ``predicted`` overrides ``proba.argmax(1)`` (a hierarchy's routed leaves).
    """
    pred = proba.argmax(1) if predicted is None else np.asarray(predicted)
    table = frame.assign(pred=[classes[i] for i in pred], confidence=proba[np.arange(len(pred)), pred])
    table["correct"] = table["label"] == table["pred"]
    picked = []
    for name in classes:
        rows = table[table["label"] == name].sort_values("confidence", ascending=False)
        picked.append(rows[rows["correct"]].head(per_class).assign(case="correct"))
        picked.append(rows[~rows["correct"]].head(per_class).assign(case="wrong"))
    return pd.concat(picked, ignore_index=True) if picked else table.head(0)


def explain_panels(bundle: str | Path | ModelBundle, data: str | Path | pd.DataFrame, out_dir: str | Path,
                   per_class: int = 3, method: str = "gradcam", split: str | None = "test", opacity: float = 0.45,
                   options: ExplainOptions | None = None, notes: list[str] | None = None, *,
                   alpha: float | None = None) -> list[Path]:
    """One PNG grid per class: N correct and N wrong cases, each as heatmap (at ``opacity``; ``alpha`` is its
    deprecated name) and contour overlays.

    For a tree of classifiers, classes are its leaves, predictions are routed, and each map comes from
    the classifier that made the last decision on the route. Rows left out (labels outside the model's
    classes, unreadable files) are appended to ``notes`` when a list is given.
    """
    opacity = renamed_keyword("explain_panels", "alpha", "opacity", alpha, opacity)
    selection = select_rows(bundle, data, split)
    loaded, frame = selection.bundle, selection.frame
    if frame.empty:
        raise DataError("no image with one of the model's classes in this data/split")
    scores = loaded.score(frame)
    if notes is not None:
        notes += selection.notes + [f"unreadable, left out: {p}: {r}" for p, r in scores.unreadable.items()]
    frame = frame.iloc[scores.positions].reset_index(drop=True)
    proba, routed = scores.probabilities, scores.decided
    cases = select_cases(frame.assign(scored_row=np.arange(len(frame))), proba, list(loaded.classes), per_class,
                         predicted=routed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for name in loaded.classes:
        rows = cases[cases["label"] == name]
        if rows.empty:
            continue
        images = [read_image(p).image for p in rows["path"]]
        scored = rows["scored_row"].to_numpy()  # the nodes' scores are known: the tree is not scored again
        routing = {key: value[scored] for key, value in scores.node_probabilities.items()}
        explanations = explain(loaded, images, method=method, options=options, routing=routing)
        tiles, titles = [], []
        for image, row, e in zip(images, rows.itertuples(), explanations):
            composed = compose(image, e.heatmap, opacity)
            tiles += [composed.heatmap_overlay, composed.contour_overlay]
            head = f"{row.case.upper()}: true {row.label}\npred {row.pred} ({row.confidence:.2f})"
            titles += [f"{head}\n{method}", f"{head}\ncontours"]
        n_correct = int((rows["case"] == "correct").sum())
        out = out_dir / f"panel_{safe_name(name)}.png"  # class names may hold '/' (hierarchy leaves)
        plot_gallery(tiles, titles, out, columns=4,
                     suptitle=f"{name}: {n_correct} correct, {len(rows) - n_correct} wrong ({method})")
        outputs.append(out)
    return outputs


def top_tile_panel(bundle: ModelBundle, result, method: str = "gradcam", top_k: int = 8) -> Path:
    """``top_tiles.png`` in a scored slide's folder (``result``: :class:`~oncolens.evaluation.slides.SlideResult`):
    the ``top_k`` tiles most likely of the slide's target class, each above its explanation overlay."""
    from ..figures import save_figure, subplots

    target = result.summary["target"]
    best = result.tiles.sort_values(result.summary.get("rank_tiles_by", f"prob_{target}"), ascending=False).head(top_k)
    tiles = {f"{t.x},{t.y}": t for t in result.tile_objects}
    images = [tiles[row.tile].load() for row in best.itertuples()]
    return TILE_PANELS.get(result.summary.get("task", "images"))(bundle, result, best, images, target, method)


#: a bundle's task -> the panel of a slide's top tiles (each with its explanation; a bag classifier's attention)
TILE_PANELS: Registry[Callable[..., Path]] = Registry("top-tile panel")


@TILE_PANELS.decorator("images")
def _explained_panel(bundle: ModelBundle, result, best, images, target: str, method: str) -> Path:
    """The tiles most likely of ``target``, each above its explanation overlay by ``method``."""
    from ..figures import save_figure, subplots

    explained = explain(bundle, images, method=method, target=target) if images else []
    fig, axes = subplots(2, max(len(best), 1), figsize=(2.2 * max(len(best), 1), 4.6), squeeze=False)
    for column, (row, image, e) in enumerate(zip(best.itertuples(), images, explained)):
        axes[0][column].imshow(image)
        axes[0][column].set_title(f"({row.x}, {row.y})\nP={getattr(row, 'prob_' + target):.2f}", fontsize=8)
        axes[1][column].imshow(compose(image, e.heatmap).heatmap_overlay)
        axes[1][column].set_title(method, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"top {len(best)} tiles for {target}")
    out = result.out_dir / "top_tiles.png"
    save_figure(fig, out)
    return out


@TILE_PANELS.decorator("bags")
def _attention_panel(bundle: ModelBundle, result, best, images, target: str, method: str) -> Path:
    """The most attended tiles of a bag classifier's slide, each with its attention and its own P(target)."""
    from ..figures import save_figure, subplots

    fig, axes = subplots(1, max(len(best), 1), figsize=(2.2 * max(len(best), 1), 2.6), squeeze=False)
    for column, (row, image) in enumerate(zip(best.itertuples(), images)):
        axes[0][column].imshow(image)
        axes[0][column].set_title(f"({row.x}, {row.y})\nattention {row.attention_relative:.1f}x\n"
                                  f"P={getattr(row, 'prob_' + target):.2f}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"the {len(best)} most attended tiles ({target}: P={result.summary['probabilities'][target]:.2f})")
    out = result.out_dir / "top_tiles.png"
    save_figure(fig, out)
    return out
