"""`oncolens slide`: tissue tiles of a generated slide scored, a table, a heatmap, slide-level scores,
resumable."""

import json

import pandas as pd
import pytest

pytest.importorskip("openslide")

from typer.testing import CliRunner  # noqa: E402

from oncolens.apps.cli import app  # noqa: E402
from oncolens.data.phantoms import generate_slide  # noqa: E402
from oncolens.evaluation.slides import score_slide, slide_summary  # noqa: E402
from oncolens.models import load_any_bundle  # noqa: E402
from tests.helpers import count_scored  # noqa: E402


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    return generate_slide(tmp_path_factory.mktemp("slide") / "s.tif", size=1024, levels=3, tile=128, seed=2)


def test_a_slide_is_scored_tile_by_tile_with_a_heatmap_and_slide_scores(tiny_bundle, slide_path, tmp_path):
    bundle = load_any_bundle(tiny_bundle)
    result = score_slide(bundle, slide_path, tmp_path / "out", mpp=4.0, min_tissue=0.5)  # 32 px tiles of 128 um
    assert len(result.tiles) == len(result.tile_objects) > 0
    assert set(result.tiles["level"]) == {2}  # 8x coarser than level 0: read from the 4x level, resized
    row = result.tiles.iloc[0]
    assert sum(row[f"prob_{c}"] for c in bundle.classes) == pytest.approx(1.0, abs=1e-4)
    assert (result.tiles["tissue_fraction"] >= 0.5).all()
    assert result.heatmap.exists() and result.heatmap.stat().st_size > 10_000
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["tiles"] == len(result.tiles) and summary["target"] == bundle.classes[-1]
    assert set(summary["classes"][bundle.classes[-1]]) == {"mean", "top_k_mean", "tissue_fraction_above"}
    if bundle.trust is not None:
        assert "ood_score" in result.tiles.columns


@pytest.mark.parametrize("calibrated", [True, False])
def test_the_slide_summary_uses_the_probability_threshold_asked_for(tiny_bundle, slide_path, tmp_path, calibrated):
    bundle = load_any_bundle(tiny_bundle)
    assert bundle.trust is not None and bundle.trust.thresholds  # the detector has a threshold of its own
    if not calibrated:
        bundle.trust = None
    result = score_slide(bundle, slide_path, tmp_path / "out", mpp=4.0, threshold=0.3)
    assert result.summary["threshold"] == 0.3
    target = bundle.classes[-1]
    above = result.tiles[f"prob_{target}"] >= 0.3
    expected = result.tiles["tissue_fraction"][above].sum() / result.tiles["tissue_fraction"].sum()
    assert result.summary["classes"][target]["tissue_fraction_above"] == pytest.approx(expected)
    assert ("out_of_distribution" in result.tiles.columns) == calibrated


def test_a_killed_slide_run_resumes_after_the_tiles_written(tiny_bundle, slide_path, tmp_path, monkeypatch):
    full = score_slide(tiny_bundle, slide_path, tmp_path / "full", mpp=4.0)
    lines = (tmp_path / "full" / "tiles.csv").read_text().splitlines(keepends=True)
    out = tmp_path / "killed"
    out.mkdir()
    (out / "tiles.csv.partial").write_text("".join(lines[:6]) + lines[6][:10])  # header + 5 tiles, a torn one
    scored = count_scored(monkeypatch)
    resumed = score_slide(tiny_bundle, slide_path, out, mpp=4.0, resume=True)
    assert scored == [len(full.tiles) - 5]
    pd.testing.assert_frame_equal(resumed.tiles.sort_values("tile").reset_index(drop=True),
                                  full.tiles.sort_values("tile").reset_index(drop=True), atol=1e-6)


def test_slide_summary_scores():
    tiles = pd.DataFrame({"prob_a": [0.9, 0.2, 0.8, 0.1], "prob_b": [0.1, 0.8, 0.2, 0.9],
                          "tissue_fraction": [1.0, 1.0, 0.5, 0.5], "label": ["a", "b", "a", "b"]})
    summary = slide_summary(tiles, ["a", "b"], top_k=2, threshold=0.5)
    assert summary["classes"]["a"]["mean"] == pytest.approx(0.5)
    assert summary["classes"]["a"]["top_k_mean"] == pytest.approx(0.85)
    assert summary["classes"]["a"]["tissue_fraction_above"] == pytest.approx(1.5 / 3)


def test_the_slide_command(tiny_bundle, slide_path, tmp_path):
    result = CliRunner().invoke(app, ["slide", str(tiny_bundle), str(slide_path), "--out", str(tmp_path),
                                      "--mpp", "4", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert all((tmp_path / "s" / name).exists() for name in ("heatmap.png", "tiles.csv", "top_tiles.png"))
    assert "top-k mean" in result.output
    missing = CliRunner().invoke(app, ["slide", str(tiny_bundle), str(tmp_path / "none.svs"), "--out", str(tmp_path)])
    assert missing.exit_code == 2 and "slide not found" in missing.output


@pytest.fixture(scope="module")
def bag_bundle(tiny_bundle, tmp_path_factory):
    """An untrained gated-attention bag head over the tiny bundle's backbone, bags of 32 px tiles at 4 um/px."""
    import torch
    from PIL import Image

    from oncolens.models.bags import BagConfig, extract_bag, load_extractor
    from oncolens.models.mil import BagClassifier, save_mil_bundle

    extractor = load_extractor(bundle=tiny_bundle)
    width = extract_bag(extractor, Image.new("RGB", (32, 32)), BagConfig(size=32, mpp=None))["features"].shape[1]
    torch.manual_seed(0)
    return save_mil_bundle(BagClassifier("abmil", in_dim=width, n_classes=2), ["normal", "tumour"], extractor.spec,
                           BagConfig(size=32, mpp=4.0).to_dict(), tmp_path_factory.mktemp("mil") / "bundle")


def test_a_slide_through_a_bag_classifier_is_a_resumable_job_whose_bag_is_made_once(bag_bundle, slide_path, tmp_path,
                                                                                     monkeypatch):
    """The tiles of a bag classifier's slide are the rows of a scoring job: a finished tiles.csv is not computed
    again on resume, a killed one is completed from one bag."""
    from oncolens.models.mil import MILBundle

    bundle = load_any_bundle(bag_bundle)
    full = score_slide(bundle, slide_path, tmp_path / "full", num_workers=0)
    assert len(full.tiles) == len(full.tile_objects) > 0 and full.tiles["attention"].sum() == pytest.approx(1, abs=1e-4)
    assert not (tmp_path / "full" / "tiles.csv.partial").exists()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "full" / "tiles.csv"), full.tiles, check_dtype=False)
    bags_made: list[str] = []
    original = MILBundle.bag_of
    monkeypatch.setattr(MILBundle, "bag_of", lambda self, source, **kw: bags_made.append(source) or original(
        self, source, **kw))

    again = score_slide(bundle, slide_path, tmp_path / "full", num_workers=0, resume=True)  # finished: no bag made
    assert bags_made == []
    pd.testing.assert_frame_equal(again.tiles, full.tiles)
    assert again.summary["probabilities"] == full.summary["probabilities"]

    killed = tmp_path / "killed"
    killed.mkdir()
    lines = (tmp_path / "full" / "tiles.csv").read_text().splitlines(keepends=True)
    (killed / "tiles.csv.partial").write_text("".join(lines[:3]) + lines[3][:7])  # two tiles and a torn one
    resumed = score_slide(bundle, slide_path, killed, num_workers=0, resume=True)
    assert len(bags_made) == 1  # the bag, made once for the rest of its tiles
    pd.testing.assert_frame_equal(resumed.tiles, full.tiles)
    assert resumed.summary["probabilities"] == pytest.approx(full.summary["probabilities"])
