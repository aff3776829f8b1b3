"""Hostile inputs, round 3: each finding of the tester's probes is a clear one-line error (exit code 2 from
the CLI), never a traceback, and bad options are refused before any work is done."""

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from oncolens.apps.cli import app
from tests.helpers import fails_cleanly, noise_image, save

runner = CliRunner()


_fails_cleanly = fails_cleanly


@pytest.mark.parametrize("level", ["50", "-1"])
def test_explain_refuses_a_level_the_bundle_does_not_have(hierarchical_bundle, tmp_path, level):
    image = save(noise_image(48), tmp_path / "x.png")
    _fails_cleanly(["explain", hierarchical_bundle, image, "--level", level, "--out", tmp_path / "ex"], "level")


def test_scan_reports_folders_it_cannot_name_or_read_and_completes(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for folder in ("a", "b", "locked"):
        for i in range(2):
            save(noise_image(32, seed=i), root / folder / f"{i}.png")
    bad = os.path.join(os.fsencode(root), b"\xff\xfe")
    os.makedirs(bad)
    save(noise_image(32), Path(os.fsdecode(os.path.join(bad, b"x.png"))))
    real_scandir = os.scandir

    def scandir(path="."):  # what a folder without read permission does (the tests run as root)
        if os.fsdecode(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fsdecode(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = runner.invoke(app, ["scan", str(root), "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 0, result.output
    assert "not valid UTF-8" in result.output and "cannot read folder" in result.output
    assert (tmp_path / "m.csv").exists()


@pytest.mark.parametrize("option,value,words", [("--size", "0", ["--size", "8,192"]), ("--mpp", "-1", ["--mpp"]),
                                                ("--min-tissue", "2", ["--min-tissue"])])
def test_tiling_options_are_checked_before_any_work(tmp_path, option, value, words):
    pytest.importorskip("openslide")
    from oncolens.data.phantoms import generate_slide

    slide = generate_slide(tmp_path / "s.tif", size=512, levels=2, tile=128, seed=1)
    _fails_cleanly(["tile", slide, "--out", tmp_path / "t", option, value], *words)
    assert not (tmp_path / "t" / "manifest.csv").exists()


def test_training_options_no_run_could_use_are_refused(tmp_path, phantom_manifest):
    from oncolens.data import save_manifest

    csv = save_manifest(phantom_manifest, tmp_path / "m.csv")
    _fails_cleanly(["train", csv, "--hed", "-5"], "hed")
    tiny = save(noise_image(1), tmp_path / "one.png")
    _fails_cleanly(["train", csv, "--stain-norm", f"macenko:{tiny}", "--runs-dir", tmp_path / "runs"], "16x16")


def test_a_damaged_bundle_is_blamed_not_the_image(tiny_bundle, tmp_path):
    image = save(noise_image(48), tmp_path / "x.png")
    for field, value, words in (("size", -5, ["input size"]), ("std", [0.0], ["std"])):
        bundle = tmp_path / f"b_{field}"
        shutil.copytree(tiny_bundle, bundle)
        info = json.loads((bundle / "bundle.json").read_text())
        info["preprocessing"][field] = value if field != "std" else value * len(info["preprocessing"]["std"])
        (bundle / "bundle.json").write_text(json.dumps(info))
        _fails_cleanly(["predict", bundle, image, "--out", tmp_path / f"{field}.csv"], "bundle.json", *words)
    truncated = tmp_path / "b_trust"
    shutil.copytree(tiny_bundle, truncated)
    data = (truncated / "trust.safetensors").read_bytes()
    (truncated / "trust.safetensors").write_bytes(data[: len(data) // 2])
    _fails_cleanly(["predict", truncated, image, "--out", tmp_path / "t.csv"], "damaged calibration")


def test_predict_resume_of_a_foreign_partial_file_and_bad_alphas(tiny_bundle, tmp_path):
    image = save(noise_image(48), tmp_path / "x.png")
    out = tmp_path / "p.csv"
    (tmp_path / "p.csv.partial").write_bytes(b"image,label\n\xff\xfe\x00garbage\n")
    _fails_cleanly(["predict", tiny_bundle, image, "--out", out, "--resume"], "delete it")
    for alpha in ("0", "1.5", "nan"):
        _fails_cleanly(["predict", tiny_bundle, image, "--out", tmp_path / "a.csv", "--alpha", alpha], "alpha")


def test_tracking_into_a_read_only_store_is_said_before_training(tmp_path, phantom_manifest):
    pytest.importorskip("mlflow")
    from oncolens.data import save_manifest, split

    csv = save_manifest(split(phantom_manifest, test=0.2, val=0.25, seed=0), tmp_path / "s.csv")
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "mlflow.db").write_bytes(b"")
    os.chmod(runs / "mlflow.db", 0o444)
    if os.access(runs / "mlflow.db", os.W_OK):  # root writes through permissions: make the store unusable instead
        (runs / "mlflow.db").write_bytes(b"this is not an SQLite database" * 100)
    _fails_cleanly(["train", csv, "--model", "seed_bn_cnn", "--image-size", "32", "--epochs", "1", "--recipe", "off",
                    "--tracking", "mlflow", "--runs-dir", runs], "tracking mlflow")


def test_an_absurd_learning_rate_is_warned_about(tmp_path, phantom_manifest):
    from oncolens.data import save_manifest, split

    csv = save_manifest(split(phantom_manifest, test=0.2, val=0.25, seed=0), tmp_path / "s.csv")
    result = runner.invoke(app, ["train", str(csv), "--model", "seed_bn_cnn", "--image-size", "32", "--epochs", "2",
                                 "--lr", "1e6", "--recipe", "off", "--runs-dir", str(tmp_path / "runs"),
                                 "--no-augment"])
    assert result.exit_code == 0 and "not usable" in result.output, result.output


@pytest.mark.parametrize("content,ok", [
    ([{"type": "Feature", "properties": {"name": "tumour"},
       "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]}}], True),  # a bare list
    ({"type": "FeatureCollection", "features": "not a list"}, False),
    ({"type": "FeatureCollection", "features": [42]}, False),
    ({"type": "FeatureCollection", "features": [{"properties": {"name": ["a"]}, "geometry": {}}]}, False),
    ({"type": "FeatureCollection", "features": [{"properties": {"name": "t"},
                                                  "geometry": {"type": "Polygon", "coordinates": [["x", "y"]]}}]}, False),
])
def test_geojson_of_the_wrong_shape_is_a_clear_error(tmp_path, content, ok):
    from oncolens.data.slides import read_geojson_regions
    from oncolens.errors import DataError

    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(content))
    if ok:
        assert [r.label for r in read_geojson_regions(path)] == ["tumour"]
    else:
        with pytest.raises(DataError, match="a.geojson"):
            read_geojson_regions(path)
