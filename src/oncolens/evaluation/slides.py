"""A whole slide through a bundle: tissue tiles scored by the one scoring loop, a per-tile table, a heatmap
over the slide's thumbnail and slide-level scores.

Tiles are read lazily by the DataLoader's workers (each opens the slide itself) and written to
``tiles.csv`` batch by batch, so memory stays flat whatever the slide's size and a killed run resumes
after the tiles already written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.slides import SlideInfo, SlideTile, check_tiling, open_slide, slide_info, slide_thumbnail, tile_grid, tissue_mask
from ..errors import DataError
from ..files import atomic_write_json, read_rows
from ..models.bundle import ModelBundle, as_bundle
from ..models.scoring_job import ScoringJob
from ..registry import Registry

__all__ = ["SlideResult", "score_slide", "slide_summary", "SLIDE_SCORERS"]


@dataclass
class SlideResult:
    """What :func:`score_slide` made: the per-tile table, the slide-level summary and the files written."""

    info: SlideInfo
    tiles: pd.DataFrame
    summary: dict
    out_dir: Path
    heatmap: Path | None
    tile_objects: list[SlideTile]


def slide_summary(tiles: pd.DataFrame, classes: list[str], top_k: int = 8, threshold: float = 0.5) -> dict:
    """Per class: the mean tile probability, the mean of the ``top_k`` highest, and the share of tissue
    (tiles weighted by their tissue fraction) whose probability is at least ``threshold``."""
    out: dict = {"tiles": int(len(tiles)), "top_k": top_k, "threshold": threshold, "classes": {}}
    if not len(tiles):
        return out
    weight = tiles["tissue_fraction"].to_numpy(float)
    for name in classes:
        p = tiles[f"prob_{name}"].to_numpy(float)
        top = np.sort(p)[::-1][:top_k]
        out["classes"][name] = {"mean": float(p.mean()), "top_k_mean": float(top.mean()),
                                "tissue_fraction_above": float(weight[p >= threshold].sum() / max(weight.sum(), 1e-12))}
    out["predicted_tiles"] = tiles["label"].value_counts().to_dict()
    if "out_of_distribution" in tiles.columns:
        flags = tiles["out_of_distribution"].astype(str).str.lower() == "true"
        out["tiles_unlike_training"] = float(flags.mean())
    return out


def _heatmap(slide, tiles: pd.DataFrame, info: SlideInfo, column: str, out: Path, title: str) -> Path:
    """``column`` of every tile as a translucent colour over the slide's thumbnail."""
    from ..figures import save_figure, subplots

    thumbnail = slide_thumbnail(slide, 1024)[0]
    scale = thumbnail.size[0] / info.dimensions[0]
    grid = np.full((thumbnail.size[1], thumbnail.size[0]), np.nan)
    for row in tiles.itertuples():
        extent = row.extent if hasattr(row, "extent") else row.read_size * info.level_downsamples[int(row.level)]
        x0, y0 = int(row.x * scale), int(row.y * scale)
        x1, y1 = max(x0 + 1, int((row.x + extent) * scale)), max(y0 + 1, int((row.y + extent) * scale))
        grid[y0:y1, x0:x1] = getattr(row, column)
    fig, ax = subplots(1, 1, figsize=(8, 8 * thumbnail.size[1] / thumbnail.size[0]))
    ax.imshow(thumbnail)
    shown = ax.imshow(np.ma.masked_invalid(grid), cmap="inferno", vmin=0, vmax=1, alpha=0.55)
    fig.colorbar(shown, ax=ax, fraction=0.04, label=column.removeprefix("prob_").replace("_", " "))
    ax.set_title(title)
    ax.axis("off")
    save_figure(fig, out)
    return out


def score_slide(bundle: str | Path | ModelBundle, slide_path: str | Path, out_dir: str | Path, *,
                mpp: float | None = 0.5, slide_mpp: float | None = None, min_tissue: float = 0.5,
                target: str | None = None, top_k: int = 8, threshold: float = 0.5, batch_size: int = 8,
                num_workers: int | None = None, resume: bool = False,
                progress: Callable[[int, int], None] | None = None) -> SlideResult:
    """Score the tissue tiles of one slide at ``mpp`` microns per pixel (tiles of the bundle's input size);
    write ``tiles.csv``, ``heatmap.png`` (probability of ``target``, default the bundle's last class, e.g.
    tumour), ``tiles.geojson`` (for QuPath: tiles as detections, the region where ``target`` reaches
    ``threshold`` as an annotation) and ``summary.json`` into ``out_dir``. ``progress(done, total)`` is called after every batch."""
    loaded = as_bundle(bundle)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = target or loaded.classes[-1]
    if target not in loaded.classes:
        raise DataError(f"class {target!r} is not one of the bundle's classes {loaded.classes}")
    options = dict(mpp=mpp, slide_mpp=slide_mpp, min_tissue=min_tissue, top_k=top_k, threshold=threshold,
                   batch_size=batch_size, num_workers=num_workers, resume=resume, progress=progress)
    return SLIDE_SCORERS.get(loaded.task)(loaded, slide_path, out_dir, target, **options)


#: a bundle's task -> how a slide is scored by it (tiles one by one, or the slide as one bag)
SLIDE_SCORERS: Registry[Callable[..., SlideResult]] = Registry("slide scorer")


@SLIDE_SCORERS.decorator("images")
def _score_slide_tiles(loaded: ModelBundle, slide_path: str | Path, out_dir: Path, target: str, *,
                       mpp: float | None, slide_mpp: float | None, min_tissue: float, top_k: int, threshold: float,
                       batch_size: int, num_workers: int | None, resume: bool,
                       progress: Callable[[int, int], None] | None) -> SlideResult:
    """A slide through an image model: each tissue tile scored (resumable row file), the per-tile heatmap,
    the tiles and the thresholded region for QuPath."""
    check_tiling(loaded.preprocessing.size, mpp, slide_mpp, min_tissue)
    slide = open_slide(slide_path)
    info = slide_info(slide, slide_path)
    mask = tissue_mask(slide)
    tiles = tile_grid(slide, slide_path, size=loaded.preprocessing.size, mpp=mpp, slide_mpp=slide_mpp,
                      min_tissue=min_tissue, mask=mask)
    trust = getattr(loaded, "trust", None)
    detector = trust.default_detector if trust is not None and trust.default_detector in trust.detectors else None
    ood_threshold = trust.thresholds.get(detector) if detector else None
    fields = ["tile", "x", "y", "level", "read_size", "size", "mpp", "tissue_fraction", "label", "confidence",
              *(f"prob_{c}" for c in loaded.classes), *(["ood_score", "out_of_distribution"] if detector else [])]
    job = ScoringJob(out_dir / "tiles.csv", key="tile", fields=fields, resume=resume)
    keys = [f"{t.x},{t.y}" for t in tiles]
    unreadable: dict[str, str] = {}

    def rows_of(todo: list[int]):
        done = len(tiles) - len(todo)
        if progress is not None:
            progress(done, len(tiles))
        if not todo:
            return
        needs_features = detector is not None and trust.default_needs_features()
        batches = loaded.iter_scores([tiles[i] for i in todo], batch_size=batch_size, num_workers=num_workers,
                                     features=needs_features)
        for batch in batches:
            unreadable.update(batch.unreadable)
            ood = trust.default_ood_values(batch) if detector else None
            rows = []
            for r, position in enumerate(batch.positions):
                tile = tiles[todo[int(position)]]
                row = {"tile": f"{tile.x},{tile.y}", **tile.record(), "label": loaded.classes[int(batch.decided[r])],
                       "confidence": float(batch.probabilities[r, batch.decided[r]]),
                       **{f"prob_{c}": float(batch.probabilities[r, i]) for i, c in enumerate(loaded.classes)}}
                if ood is not None:
                    row.update(ood_score=float(ood[r]), out_of_distribution=bool(ood[r] > ood_threshold))
                rows.append(row)
            yield rows
            done += len(batch) + len(batch.unreadable)
            if progress is not None:
                progress(done, len(tiles))

    job.score(keys, rows_of)
    table = _read_table(out_dir / "tiles.csv", fields, text=("tile", "label", "out_of_distribution"))
    views = [{"file": "heatmap.png", "caption": f"P({target}) per tile over the slide's thumbnail"},
             {"file": "top_tiles.png", "caption": "the tiles most likely of the class, with their explanation"}]
    summary = {"slide": info.to_dict(), "target": target, "task": loaded.task, "rank_tiles_by": f"prob_{target}",
               "views": views, "mpp": mpp, "min_tissue": min_tissue,
               "tissue_fraction_of_slide": float(mask[0].mean()), "tiles_in_grid": len(tiles),
               "unreadable_tiles": unreadable, **slide_summary(table, loaded.classes, top_k, threshold)}
    heatmap = _heatmap(slide, table, info, f"prob_{target}", out_dir / "heatmap.png",
                       f"{Path(slide_path).name}: P({target}) per tile") if len(table) else None
    if len(table):  # the tiles and the thresholded region for QuPath (File > Import objects)
        from .qupath import write_slide_geojson

        write_slide_geojson(table, info.level_downsamples, loaded.classes, target, out_dir / "tiles.geojson",
                            threshold=threshold)
    atomic_write_json(out_dir / "summary.json", summary)
    return SlideResult(info=info, tiles=table, summary=summary, out_dir=out_dir, heatmap=heatmap, tile_objects=tiles)


def _read_table(path: Path, fields: list[str], text: tuple[str, ...]) -> pd.DataFrame:
    """A tile table written by a scoring job, its columns other than ``text`` as numbers."""
    table = pd.DataFrame(list(read_rows(path)), columns=fields)
    for column in table.columns:
        if column not in text:
            table[column] = pd.to_numeric(table[column])
    return table


def _bag_rows(bag: dict, classes: list[str], target: str) -> list[dict]:
    """One row per instance of a slide's bag: where it is, its attention (also relative to uniform and times
    its own P(``target``)), its own class probabilities and class."""
    attention, instances, coords = bag["attention"], bag["instance_probabilities"], bag["coords"]
    weighted = attention * instances[:, classes.index(target)]
    relative = attention * len(attention)
    decided = instances.argmax(1)
    return [{"tile": f"{int(x)},{int(y)}", "x": int(x), "y": int(y), "extent": coords[i, 2],
             "tissue_fraction": bag["tissue"][i], "attention": attention[i], "attention_relative": relative[i],
             f"attention_x_prob_{target}": weighted[i], **{f"prob_{c}": instances[i, k] for k, c in enumerate(classes)},
             "label": classes[int(decided[i])]}
            for i, (x, y) in enumerate(coords[:, :2])]


@SLIDE_SCORERS.decorator("bags")
def _score_slide_bag(loaded, slide_path: str | Path, out_dir: Path, target: str, *, top_k: int, batch_size: int,
                     num_workers: int | None, resume: bool, progress: Callable[[int, int], None] | None,
                     **_: object) -> SlideResult:
    """A slide through a bag classifier: its bag (tiles as the bundle cuts them), the slide's probabilities,
    and per tile its attention and the attention-weighted score of ``target``; ``tiles.csv`` (the tiles are
    the rows of a scoring job: the bag is computed once, and ``resume`` after a finished table does not compute
    it again), heatmaps of both over the thumbnail, ``tiles.geojson`` (attention as a measurement) and
    ``summary.json``."""
    slide = open_slide(slide_path)
    info = slide_info(slide, slide_path)
    fields = ["tile", "x", "y", "extent", "tissue_fraction", "attention", "attention_relative",
              f"attention_x_prob_{target}", *(f"prob_{c}" for c in loaded.classes), "label"]
    job = ScoringJob(out_dir / "tiles.csv", key="tile", fields=fields, resume=resume)

    def bag_of_slide() -> dict:
        return loaded.attention(str(slide_path), batch_size=max(batch_size, 32), num_workers=num_workers,
                                progress=progress)

    bag = None
    if not (resume and job.complete):
        bag = bag_of_slide()
        rows = _bag_rows(bag, loaded.classes, target)

        def rows_of(todo: list[int]):
            for start in range(0, len(todo), 1024):
                yield [rows[i] for i in todo[start:start + 1024]]

        job.score([row["tile"] for row in rows], rows_of)
    table = _read_table(out_dir / "tiles.csv", fields, text=("tile", "label"))
    if bag is None:  # a finished table: the slide's probabilities are the summary's, else the bag's once more
        if progress is not None:
            progress(len(table), len(table))
        before = json.loads((out_dir / "summary.json").read_text()) if (out_dir / "summary.json").is_file() else {}
        probabilities = before.get("probabilities") if before.get("target") == target else None
        probabilities = probabilities or dict(zip(loaded.classes, map(float, bag_of_slide()["probabilities"])))
    else:
        probabilities = dict(zip(loaded.classes, map(float, bag["probabilities"])))
    attention = table["attention"].to_numpy(float)
    weighted = table[f"attention_x_prob_{target}"].to_numpy(float)
    order = np.argsort(-attention)[:top_k]
    views = [{"file": "heatmap.png", "caption": "attention per tile (where the slide's decision comes from)"},
             {"file": "heatmap_weighted.png", "caption": f"attention x each tile's own P({target})"},
             {"file": "top_tiles.png", "caption": "the most attended tiles"}]
    summary = {"slide": info.to_dict(), "target": target, "task": loaded.task, "rank_tiles_by": "attention",
               "views": views, "probabilities": probabilities,
               "label": max(probabilities, key=probabilities.get),
               "tissue_fraction_of_slide": float(tissue_mask(slide)[0].mean()), "unreadable_tiles": {},
               "top_attention_tiles": table.iloc[order][["x", "y", "attention"]].to_dict("records"),
               **slide_summary(table, loaded.classes, top_k)}
    from ..models.bags import BagConfig, bag_instances

    instances = {f"{int(x)},{int(y)}": item for item, (x, y, _, _) in
                 zip(*bag_instances(slide_path, BagConfig(**loaded.bag_spec))[:2])}
    tile_objects = [instances[t] for t in table["tile"] if t in instances]  # the panel finds tiles by corner
    scaled = table.assign(attention_scaled=attention / max(float(attention.max()), 1e-12),
                          weighted_scaled=weighted / max(float(weighted.max()), 1e-12))
    heatmap = _heatmap(slide, scaled, info, "attention_scaled", out_dir / "heatmap.png",
                       f"{Path(slide_path).name}: attention (P({target}) = {probabilities[target]:.2f})")
    _heatmap(slide, scaled, info, "weighted_scaled", out_dir / "heatmap_weighted.png",
             f"{Path(slide_path).name}: attention x P({target}) per tile")
    from .qupath import write_slide_geojson

    write_slide_geojson(table.assign(level=0, read_size=table["extent"]), (1.0,), loaded.classes, target,
                        out_dir / "tiles.geojson", threshold=0.5, extra=("tissue_fraction", "attention",
                                                                          f"attention_x_prob_{target}"))
    atomic_write_json(out_dir / "summary.json", summary)
    return SlideResult(info=info, tiles=table, summary=summary, out_dir=out_dir, heatmap=heatmap,
                       tile_objects=tile_objects)
