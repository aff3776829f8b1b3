"""The QuPath round trip: a scored slide's GeoJSON (tiles as detections, the thresholded region as an
annotation) is valid GeoJSON of QuPath's object shape, at level 0, with closed rings; `tile` reads it back."""

import json

import numpy as np
import pandas as pd
import pytest

jsonschema = pytest.importorskip("jsonschema")

from oncolens.evaluation.qupath import slide_geojson  # noqa: E402

_POSITION = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_RING = {"type": "array", "items": _POSITION, "minItems": 4}
_POLYGON = {"type": "array", "items": _RING, "minItems": 1}
#: GeoJSON (RFC 7946) Features of QuPath's object shape, as QuPath 0.4+ exports and imports them
SCHEMA = {
    "type": "object", "required": ["type", "features"],
    "properties": {"type": {"const": "FeatureCollection"}, "features": {"type": "array", "items": {
        "type": "object", "required": ["type", "geometry", "properties"],
        "properties": {
            "type": {"const": "Feature"}, "id": {"type": "string"},
            "geometry": {"oneOf": [
                {"type": "object", "required": ["type", "coordinates"],
                 "properties": {"type": {"const": "Polygon"}, "coordinates": _POLYGON}},
                {"type": "object", "required": ["type", "coordinates"],
                 "properties": {"type": {"const": "MultiPolygon"}, "coordinates": {"type": "array", "items": _POLYGON}}}]},
            "properties": {"type": "object", "required": ["objectType", "classification", "measurements"],
                           "properties": {
                               "objectType": {"enum": ["detection", "annotation"]},
                               "classification": {"type": "object", "required": ["name", "color"],
                                                  "properties": {"name": {"type": "string"},
                                                                 "color": {"type": "array", "minItems": 3,
                                                                           "maxItems": 3}}},
                               "measurements": {"type": "object", "additionalProperties": {"type": "number"}}}}}}}}}


def _tiles(mask: np.ndarray, step: int = 256, origin=(1000, 2000)) -> pd.DataFrame:
    """A tile table on a regular grid whose tumour probability is 0.9 where ``mask`` is set, else 0.1."""
    rows = []
    for r, c in zip(*np.nonzero(np.ones_like(mask))):
        p = 0.9 if mask[r, c] else 0.1
        rows.append({"x": origin[0] + c * step, "y": origin[1] + r * step, "level": 1, "read_size": step // 2,
                     "tissue_fraction": 1.0, "label": "tumor" if p > 0.5 else "normal", "prob_normal": 1 - p,
                     "prob_tumor": p})
    return pd.DataFrame(rows)


def test_the_geojson_is_quPath_shaped_at_level_0_with_closed_rings_and_a_hole():
    mask = np.zeros((6, 7), bool)
    mask[1:5, 1:6] = True
    mask[2:3, 3:4] = False  # a hole in the region
    tiles = _tiles(mask)
    collection = slide_geojson(tiles, (1.0, 2.0), ["normal", "tumor"], "tumor", threshold=0.5)
    jsonschema.validate(collection, SCHEMA)
    json.dumps(collection)  # plain JSON types only
    detections = [f for f in collection["features"] if f["properties"]["objectType"] == "detection"]
    regions = [f for f in collection["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(detections) == mask.size and len(regions) == 1
    first = detections[0]
    assert set(first["properties"]["measurements"]) == {"prob_normal", "prob_tumor", "tissue_fraction"}
    ring = first["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and ring[0] == [1000.0, 2000.0] and ring[2] == [1256.0, 2256.0]  # level 0: 128 x 2
    polygons = regions[0]["geometry"]["coordinates"]
    assert len(polygons) == 1 and len(polygons[0]) == 2  # one outer ring and its hole
    for polygon_ring in polygons[0]:
        assert polygon_ring[0] == polygon_ring[-1]
    outer, hole = (np.array(r) for r in polygons[0])
    # the outer ring runs along the selected tiles' edges (within an eighth of a tile)
    assert abs(outer[:, 0].min() - (1000 + 256)) <= 32 and abs(outer[:, 0].max() - (1000 + 6 * 256)) <= 32
    assert abs(outer[:, 1].min() - (2000 + 256)) <= 32 and abs(outer[:, 1].max() - (2000 + 5 * 256)) <= 32
    assert hole[:, 0].min() >= 1000 + 3 * 256 - 32 and hole[:, 0].max() <= 1000 + 4 * 256 + 32
    assert regions[0]["properties"]["measurements"]["tiles"] == int(mask.sum())


def test_no_tile_above_the_threshold_means_no_region():
    collection = slide_geojson(_tiles(np.zeros((3, 3), bool)), (1.0, 2.0), ["normal", "tumor"], "tumor")
    assert all(f["properties"]["objectType"] == "detection" for f in collection["features"])


def test_a_scored_slide_round_trips_through_the_tile_command_s_reader(tmp_path):
    """The exported region is read back by the reader `oncolens tile --annotations` uses (QuPath's format)."""
    from oncolens.data.slides import read_geojson_regions

    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    path = tmp_path / "tiles.geojson"
    path.write_text(json.dumps(slide_geojson(_tiles(mask), (1.0, 2.0), ["normal", "tumor"], "tumor")))
    regions = read_geojson_regions(path)
    tumour = [r for r in regions if r.label == "tumor"]
    assert tumour and tumour[0].contains(1000 + 300, 2000 + 300) and not tumour[0].contains(1000 + 900, 2000 + 900)
