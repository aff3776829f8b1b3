import numpy as np
import pytest
import torch

from oncolens.explain import draw_regions, extract_regions, localise, overlay_heatmap, threshold_map
from oncolens.explain.trust import deletion_insertion, mask_iou, pointing_game, random_map


def two_blobs(size=64):
    yy, xx = np.mgrid[0:size, 0:size]
    a = np.exp(-((yy - 16) ** 2 + (xx - 16) ** 2) / (2 * 4**2))
    b = 0.8 * np.exp(-((yy - 44) ** 2 + (xx - 48) ** 2) / (2 * 5**2))
    return (a + b).astype(np.float32)


def test_otsu_regions_and_boxes_found_where_blobs_are():
    heatmap = two_blobs()
    regions = extract_regions(threshold_map(heatmap, "otsu"), heatmap)
    assert len(regions) == 2
    centers = sorted((x + w / 2, y + h / 2) for x, y, w, h in (r.box for r in regions))
    assert centers[0] == pytest.approx((16, 16), abs=2) and centers[1] == pytest.approx((48, 44), abs=2)
    assert all(0 < r.area_fraction < 0.2 for r in regions)
    assert len(regions[0].polygon) >= 4


def test_percentile_threshold_area():
    heatmap = np.random.default_rng(0).random((50, 50)).astype(np.float32)
    assert threshold_map(heatmap, "percentile", 90).mean() == pytest.approx(0.10, abs=0.01)
    assert not threshold_map(np.zeros((8, 8)), "otsu").any()
    with pytest.raises(ValueError):
        threshold_map(heatmap, "magic")


def test_drawing_scales_to_image_and_is_green():
    heatmap = two_blobs()
    where = localise(heatmap)
    image = np.zeros((128, 128, 3), dtype=np.uint8)
    drawn = draw_regions(image, where.regions, heatmap.shape)
    assert drawn.shape == (128, 128, 3)
    green = (drawn[..., 1] > 200) & (drawn[..., 0] < 50)
    ys, xs = np.nonzero(green)
    assert green.any() and xs.max() > 64  # the second blob, scaled x2, lies in the right half
    overlay = overlay_heatmap(np.zeros((40, 30), dtype=np.uint8), heatmap)
    assert overlay.shape == (40, 30, 3) and overlay.dtype == np.uint8


def test_pointing_game_and_iou():
    mask = np.zeros((64, 64), bool)
    mask[10:22, 10:22] = True
    heatmap = two_blobs()
    assert pointing_game(heatmap, mask) is True
    assert pointing_game(np.roll(heatmap, 30, axis=0), mask) is False
    assert pointing_game(heatmap, np.zeros_like(mask)) is None
    assert mask_iou(heatmap, mask) > 0.2
    assert mask_iou(random_map((64, 64)), mask) < 0.2


class CornerModel(torch.nn.Module):
    """Class 1's logit is the mean brightness of the top-left corner."""

    def forward(self, x):
        score = (x[:, :, :16, :16].mean(dim=(1, 2, 3)) - 0.5) * 8
        return torch.stack([-score, score], 1)


def test_deletion_insertion_prefers_faithful_map():
    x = torch.zeros(1, 3, 64, 64)
    x[:, :, :16, :16] = 1.0
    faithful = np.zeros((64, 64), np.float32)
    faithful[:16, :16] = 1
    good = deletion_insertion(CornerModel(), x, faithful, target=1, steps=16)
    rand = deletion_insertion(CornerModel(), x, random_map((64, 64)), target=1, steps=16)
    assert good.deletion_auc < rand.deletion_auc
    assert good.insertion_auc > rand.insertion_auc
    assert len(good.deletion_curve) == 17


def test_overlay_and_composition_say_opacity():
    """``opacity`` everywhere the heatmap is blended (as ``--opacity``); the old ``alpha=`` warns for one release."""
    from oncolens.explain import compose

    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    heatmap = two_blobs()
    np.testing.assert_array_equal(overlay_heatmap(image, heatmap, opacity=0.0), image)
    assert (overlay_heatmap(image, heatmap, opacity=1.0) != image).any()
    with pytest.warns(DeprecationWarning, match=r"overlay_heatmap\(alpha=...\) is now opacity="):
        old = overlay_heatmap(image, heatmap, alpha=1.0)
    np.testing.assert_array_equal(old, overlay_heatmap(image, heatmap, opacity=1.0))
    np.testing.assert_array_equal(compose(image, heatmap, opacity=0.0).heatmap_overlay, image)
    with pytest.warns(DeprecationWarning, match=r"compose\(alpha=...\) is now opacity="):
        np.testing.assert_array_equal(compose(image, heatmap, alpha=0.0).heatmap_overlay, image)
