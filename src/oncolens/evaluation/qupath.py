"""A scored slide as GeoJSON that QuPath imports (File > Import objects, or drag and drop): every tile a
detection object with its class probabilities (and attention, for bag models) as measurements, and the
tissue where the target class reaches a threshold as one annotation (a MultiPolygon with its holes).

Coordinates are level-0 pixels of the slide, as QuPath places objects. Objects follow QuPath's GeoJSON
(0.4 and later): ``properties.objectType`` is ``detection`` or ``annotation``, ``classification`` names the
class, ``measurements`` maps names to numbers. The region's outline comes from OpenCV's contours of the
thresholded tile grid (outer rings and holes, ``RETR_CCOMP``), traced on a 4x finer grid so that its edges
fall within an eighth of a tile of the tiles' own.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_write_json

__all__ = ["slide_geojson", "write_slide_geojson", "QUPATH_COLOURS"]

#: RGB colours of the classes in QuPath (cycled)
QUPATH_COLOURS = ((200, 0, 0), (0, 150, 0), (0, 0, 200), (200, 150, 0), (150, 0, 150), (0, 150, 150))
_FINER = 4


def _colour(classes: list[str], name: str) -> list[int]:
    return list(QUPATH_COLOURS[classes.index(name) % len(QUPATH_COLOURS)]) if name in classes else [128, 128, 128]


def _square(x: float, y: float, extent: float) -> list[list[list[float]]]:
    return [[[x, y], [x + extent, y], [x + extent, y + extent], [x, y + extent], [x, y]]]


def _region_polygons(tiles: pd.DataFrame, extents: np.ndarray, selected: np.ndarray) -> list:
    """Polygons (outer ring, then holes) covering the selected tiles of a regular grid, in level 0."""
    import cv2

    if not selected.any():
        return []
    step = float(np.median(extents))
    x0, y0 = float(tiles["x"].min()), float(tiles["y"].min())
    cols = np.rint((tiles["x"].to_numpy(float) - x0) / step).astype(int)
    rows = np.rint((tiles["y"].to_numpy(float) - y0) / step).astype(int)
    grid = np.zeros(((rows.max() + 1) * _FINER + 2, (cols.max() + 1) * _FINER + 2), dtype=np.uint8)
    for r, c in zip(rows[selected], cols[selected]):
        grid[1 + r * _FINER:1 + (r + 1) * _FINER, 1 + c * _FINER:1 + (c + 1) * _FINER] = 1
    contours, hierarchy = cv2.findContours(grid, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)

    def ring(contour: np.ndarray) -> list[list[float]]:
        # pixel centres of the outermost cells: +0.5 puts the edge halfway to the next cell
        points = [[x0 + (px - 1 + 0.5) * step / _FINER, y0 + (py - 1 + 0.5) * step / _FINER]
                  for px, py in contour[:, 0, :]]
        return points + [points[0]]

    polygons = []
    for index, contour in enumerate(contours):
        if hierarchy[0][index][3] != -1 or len(contour) < 3:  # a hole: added to its outer ring below
            continue
        rings = [ring(contour)]
        child = hierarchy[0][index][2]
        while child != -1:
            if len(contours[child]) >= 3:
                rings.append(ring(contours[child]))
            child = hierarchy[0][child][0]
        polygons.append(rings)
    return polygons


def slide_geojson(tiles: pd.DataFrame, level_downsamples: tuple[float, ...], classes: list[str], target: str,
                  threshold: float = 0.5, extra_measurements: tuple[str, ...] = ("tissue_fraction",)) -> dict:
    """The FeatureCollection of a scored slide's tile table (``tiles.csv`` of :func:`score_slide`)."""
    extents = tiles["read_size"].to_numpy(float) * np.array([level_downsamples[int(v)] for v in tiles["level"]])
    names = [f"prob_{c}" for c in classes] + [m for m in extra_measurements if m in tiles.columns]
    features = []
    for row, extent in zip(tiles.to_dict("records"), extents):
        label = str(row.get("label", ""))
        features.append({
            "type": "Feature", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"tile:{row['x']},{row['y']}")),
            "geometry": {"type": "Polygon", "coordinates": _square(float(row["x"]), float(row["y"]), float(extent))},
            "properties": {"objectType": "detection", "classification": {"name": label, "color": _colour(classes, label)},
                           "measurements": {name: float(row[name]) for name in names}}})
    selected = tiles[f"prob_{target}"].to_numpy(float) >= threshold
    polygons = _region_polygons(tiles, extents, selected)
    if polygons:
        features.append({
            "type": "Feature", "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"region:{target}:{threshold}")),
            "geometry": {"type": "MultiPolygon", "coordinates": polygons},
            "properties": {"objectType": "annotation", "name": f"{target} (P >= {threshold:g})",
                           "classification": {"name": target, "color": _colour(classes, target)},
                           "measurements": {"tiles": int(selected.sum()),
                                            f"mean prob_{target}": float(tiles.loc[selected, f'prob_{target}'].mean())}}})
    return {"type": "FeatureCollection", "features": features}


def write_slide_geojson(tiles: pd.DataFrame, level_downsamples: tuple[float, ...], classes: list[str], target: str,
                        out: str | Path, threshold: float = 0.5, extra: tuple[str, ...] = ("tissue_fraction",)) -> Path:
    """:func:`slide_geojson` written to ``out`` (atomically); ``extra``: more tile columns as measurements."""
    out = Path(out)
    atomic_write_json(out, slide_geojson(tiles, level_downsamples, classes, target, threshold, extra))
    return out
