"""A hostile-input corpus, generated here, through scan, predict, explain, evaluate and the API: every
bad file is reported with its reason, every good one is used, nothing crashes or is overwritten."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from oncolens.apps.api import create_app
from oncolens.apps.cli import app
from oncolens.data import scan
from oncolens.predictor import Predictor
from tests.helpers import dicom_file, make_bad_corpus, noise_image, save

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """``{name: ("ok" | "skip", detail)}`` and the root: the helpers' bad files, a DICOM bomb header,
    unicode and non-UTF-8 names, names repeated across class folders, a linked class folder."""
    root = tmp_path_factory.mktemp("hostile") / "data"
    expected = make_bad_corpus(root)
    dicom_file(root / "cls_a" / "bomb.dcm", claimed=(20, 6000, 6000))
    expected["bomb.dcm"] = ("skip", "too large")
    dicom_file(root / "cls_a" / "ok.dcm")
    expected["ok.dcm"] = ("ok", "L")
    save(noise_image(32, seed=4), root / "cls_a" / "naïve ünïcode 图像.png")
    expected["naïve ünïcode 图像.png"] = ("ok", "RGB")
    save(noise_image(32, seed=5), root / "cls_a" / os.fsdecode(b"latin\xe9.png"))
    expected["latin\ufffd.png"] = ("skip", "not valid UTF-8")
    for folder in ("cls_a", "cls_b"):  # the same file name in two class folders
        save(noise_image(32, seed=hash(folder) % 100), root / folder / "same.png")
    expected["same.png"] = ("ok", "RGB")
    linked = root.parent / "elsewhere"
    save(noise_image(32, seed=7), linked / "linked.png")
    (root / "cls_c").symlink_to(linked, target_is_directory=True)
    expected["linked.png"] = ("ok", "RGB")
    if _long_ome_xml_tiff(root / "cls_a" / "long-ome-xml.ome.tif"):
        expected["long-ome-xml.ome.tif"] = ("ok", "RGB")
    return root, expected


def _long_ome_xml_tiff(path: Path) -> bool:
    """A tiled OME-TIFF whose OME-XML is 5 MB of empty elements (over the 4 MiB a slide's is parsed; a 60 MB one
    stalled `oncolens slide`): an image like any other here (tests/test_hostile_round4_sizes.py: as a slide)."""
    try:
        import tifffile
    except ImportError:  # the slides extra
        return False
    description = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/'
                   '2016-06">' + "<J/>" * 1_300_000 + '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder='
                   '"XYCZT" Type="uint8" SizeX="256" SizeY="256" SizeC="3" SizeZ="1" SizeT="1" PhysicalSizeX="0.5"/>'
                   '</Image></OME>')
    image = np.asarray(noise_image(256, seed=8))
    with tifffile.TiffWriter(path) as writer:
        writer.write(image, tile=(128, 128), photometric="rgb", compression="zlib", metadata=None,
                     description=description.encode())
    return True


def test_scan_keeps_every_good_file_and_names_every_bad_one(corpus):
    root, expected = corpus
    result = scan(root, layout="folder")
    kept = [Path(p).name for p in result.manifest["path"]]
    skipped = {Path(s.path).name: s.reason for s in result.skipped}
    for name, (outcome, detail) in expected.items():
        if outcome == "ok":
            assert name in kept, name
        else:
            assert detail in skipped[name], (name, skipped.get(name))
    assert kept.count("same.png") == 2 and result.summary.class_counts["cls_c"] == 1


def test_predict_and_explain_skip_bad_files_and_never_overwrite(corpus, tiny_bundle, tmp_path):
    root, expected = corpus
    good = sum(1 for outcome, _ in expected.values() if outcome == "ok") + 1  # same.png twice
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(tiny_bundle), str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(out)) == good and "bomb.dcm" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["explain", str(tiny_bundle), str(root), "--out", str(tmp_path / "ex")])
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "ex" / "explanations.json").read_text())
    assert len(records["explanations"]) == good
    outputs = {r["contours_png"] for r in records["explanations"]}
    assert len(outputs) == good and all((tmp_path / "ex" / name).exists() for name in outputs)
    assert any("bomb.png" in path for path in records["skipped"])


def test_evaluate_reports_unreadable_rows(corpus, tiny_bundle, tmp_path, phantom_manifest):
    root, expected = corpus
    bad = [str(p) for p in (root / "cls_a").iterdir() if expected.get(p.name, ("ok",))[0] == "skip"]
    rows = phantom_manifest.head(12).assign(split="test")
    data = pd.concat([rows, pd.DataFrame({"path": bad, "label": rows["label"].iloc[0], "split": "test"})])
    manifest = tmp_path / "m.csv"
    data.to_csv(manifest, index=False)
    result = runner.invoke(app, ["evaluate", str(tiny_bundle), "--data", str(manifest), "--out",
                                 str(tmp_path / "ev"), "--n-boot", "10"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n"] == 12 and len(metrics["unreadable"]) == len(bad)


def test_api_answers_every_bad_upload_with_a_4xx(corpus, tiny_bundle):
    root, expected = corpus
    client = TestClient(create_app(Predictor.from_bundle(tiny_bundle)))
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = os.fsencode(path.name).decode("utf-8", "replace")
        outcome = expected.get(name, ("ok",))[0]
        for endpoint in ("/predict", "/explain"):
            response = client.post(endpoint, files={"file": (name, path.read_bytes(), "application/octet-stream")})
            if outcome == "ok" or "UTF-8" in expected.get(name, ("", ""))[1]:
                assert response.status_code == 200, (name, endpoint, response.text)
            else:
                assert 400 <= response.status_code < 500 and "detail" in response.json(), (name, endpoint)
    assert client.get("/health").status_code == 200


def test_corpus_cleanup_is_possible(corpus):
    root, _ = corpus
    shutil.rmtree(root.parent / "elsewhere")  # a dangling link left behind is not a crash either
    assert scan(root, layout="folder").summary.n_images > 0
