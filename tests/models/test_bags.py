"""Bags of large images: `oncolens features` on a folder cuts each image into native-resolution crops plus the
whole image, reports and skips a corrupt file, keeps the bags it made on a rerun, and its bags match what the
extractor computes for the image in memory."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from oncolens.apps.cli import app
from oncolens.models.bags import BagConfig, bag_instances, extract_bag, load_extractor, read_bag


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("benign", "malignant"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (100, 150, 3), np.uint8)).save(
                tmp_path / "images" / label / f"{label}{i}.png")
    (tmp_path / "images" / "benign" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tmp_path / "images"


def test_features_makes_a_bag_per_image_skips_a_corrupt_file_and_resumes(folder, tiny_bundle, tmp_path):
    runner = CliRunner()
    args = ["features", str(folder), "--out", str(tmp_path / "bags"), "--bundle", str(tiny_bundle), "--size", "32"]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "skipped" in done.output and "broken.png" in done.output
    bags = pd.read_csv(tmp_path / "bags" / "bags.csv")
    assert len(bags) == 4 and sorted(bags["label"].unique()) == ["benign", "malignant"]
    arrays, metadata = read_bag(bags["path"].iloc[0])
    assert arrays["features"].shape[0] == 13  # 3 x 4 crops of 32 px, plus the whole image
    assert arrays["coords"][:, 2:].tolist()[:12] == [[32, 32]] * 12 and arrays["coords"][-1].tolist() == [0, 0, 150, 100]
    assert metadata["extractor"]["bundle"] == str(tiny_bundle.resolve())
    image = Image.open(bags["bag_source"].iloc[0]).convert("RGB")
    in_memory = extract_bag(load_extractor(bundle=tiny_bundle), image, BagConfig(size=32, mpp=None))
    np.testing.assert_allclose(in_memory["features"], arrays["features"], atol=1e-5)
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "bags").glob("*.safetensors")}
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "bags").glob("*.safetensors")} == written  # kept


def test_an_image_smaller_than_an_instance_is_one_whole_image_instance():
    items, boxes, tissue = bag_instances(Image.new("RGB", (20, 30)), BagConfig(size=32, whole=False))
    assert len(items) == 1 and boxes.tolist() == [[0, 0, 20, 30]] and items[0].load().size == (32, 32)


def test_a_stripped_tiff_is_cut_like_any_image(tmp_path):
    """A microscope's TIFF export (stripped, not tiled) is a large image, not a slide: crops at its pixels."""
    import tifffile

    tifffile.imwrite(tmp_path / "field.tif", np.zeros((100, 150, 3), np.uint8), photometric="rgb")
    items, boxes, _ = bag_instances(tmp_path / "field.tif", BagConfig(size=32))
    assert len(items) == 13 and boxes[-1].tolist() == [0, 0, 150, 100]
