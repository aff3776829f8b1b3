"""Hostile inputs, round 3: no label, slide name, image stem or id writes outside the output folder, names
stay unique, and files get the mode the umask gives an ordinary ``open()``."""

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from oncolens.apps.cli import app
from oncolens.files import atomic_folder, atomic_write_text, safe_name

runner = CliRunner()
#: labels a tester tried: traversal, absolute, nested, device names, NUL, very long, not UTF-8
HOSTILE = ["..", "../../../../escape", "/abs/olute", "a/b", "a\\b", "NUL", "CON", "con.txt", "nul\0byte", "x" * 300,
           os.fsdecode(b"latin\xe9\xff"), ".", "", " ", "tumour"]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_safe_names_are_plain_unique_names_inside_their_folder(tmp_path):
    names = [safe_name(label) for label in HOSTILE]
    assert len(set(names)) == len(HOSTILE)  # distinct labels never share a name
    for label, name in zip(HOSTILE, names):
        assert name and name not in (".", "..") and not {"/", "\\", "\0", ":"} & set(name), name
        assert len(name) <= 90 and name.split(".")[0].lower() not in ("con", "nul")
        name.encode("utf-8")  # writable on any file system that takes UTF-8
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    assert safe_name("tumour") == "tumour" and safe_name("T2 N0") == "T2 N0"  # readable names are kept as they are


@pytest.mark.parametrize("how", ["geojson", "slide-labels"])
def test_tile_writes_nothing_outside_out_whatever_the_labels(tmp_path, how):
    pytest.importorskip("openslide")
    from oncolens.data import load_manifest
    from oncolens.data.phantoms import generate_slide

    slide = generate_slide(tmp_path / "in" / "s.tif", size=512, levels=2, tile=128, seed=1)
    out = tmp_path / "deep" / "er" / "out"
    labels = [label for label in HOSTILE if label.strip()]  # an empty name is refused as "no label"
    cells = [(x, y) for y in range(0, 512, 128) for x in range(0, 512, 128)][:len(labels)]
    if how == "geojson":
        source = tmp_path / "in" / "s.geojson"
        features = [{"type": "Feature", "properties": {"classification": {"name": label}},
                     "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + 128, y], [x + 128, y + 128],
                                                                       [x, y + 128], [x, y]]]}}
                    for label, (x, y) in zip(labels, cells)]
        source.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        option = "--annotations"
    else:
        source = tmp_path / "in" / "labels.csv"
        source.write_text("slide,label,patient\ns.tif,../../../../escape,../p\n")
        option = "--slide-labels"
    before = _files(tmp_path)
    result = runner.invoke(app, ["tile", str(slide), "--out", str(out), "--size", "32", "--mpp", "2.0",
                                 "--min-tissue", "0", option, str(source)])
    assert result.exit_code == 0, result.output
    assert _files(tmp_path) - before <= _files(out) and _files(out)  # every new file is under --out
    frame = load_manifest(out / "manifest.csv")
    # the manifest keeps the labels as they were (undecodable bytes as U+FFFD: a CSV holds text)
    assert set(frame["label"]) <= {label.encode("utf-8", "replace").decode() for label in HOSTILE} and len(frame)
    if how == "slide-labels":
        assert set(frame["label"]) == {"../../../../escape"}


def test_explain_names_are_unique_for_crafted_file_names(tiny_bundle, tmp_path):
    from PIL import Image

    from oncolens.explain.outputs import output_stems

    names = ["x/b.png", "y/b.png", "x__b.png", "x__b_2.png"]
    for i, name in enumerate(names):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (i * 40, 80, 120)).save(tmp_path / name)
    paths = [tmp_path / n for n in names]
    assert len(set(output_stems(paths))) == 4 and len(set(output_stems(paths + paths[:1]))) == 5
    result = runner.invoke(app, ["explain", str(tiny_bundle), *map(str, paths), "--out", str(tmp_path / "ex")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "ex").glob("*.heatmap.png"))) == 4  # four explanations, four sets of files


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_atomic_files_get_the_mode_an_ordinary_open_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        written = atomic_write_text(tmp_path / "f.json", "{}")
        with atomic_folder(tmp_path / "folder") as staging:
            (staging / "x").write_text("1")
        plain = tmp_path / "plain"
        plain.write_text("")
    finally:
        os.umask(old)
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o777 & ~umask


def test_a_run_name_is_a_folder_name_not_a_path(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "m.csv"), "--name", "../../elsewhere"])
    assert result.exit_code == 2 and "folder name" in result.output


@pytest.mark.slow
def test_hostile_class_and_domain_names_stay_inside_every_output_folder(phantom_manifest, tmp_path):
    """A bundle trained on hostile class names, then evaluate (with explanation panels per class), explain,
    predict and a transfer study over hostile domain names: every file lands under its command's folder."""
    from oncolens.data import save_manifest, split
    from oncolens.studies import transfer_matrix
    from oncolens.training import TrainConfig, train

    work = tmp_path / "a" / "b"
    names = dict(zip(sorted(phantom_manifest["label"].unique()), ["..", "a/b", "CON", "x" * 300]))
    frame = phantom_manifest.assign(label=phantom_manifest["label"].map(names))
    domains = phantom_manifest.assign(organ=phantom_manifest["organ"].map({"histo": "../../up", "mri": "NUL"}))
    csv = save_manifest(split(frame, test=0.25, val=0.2, seed=0), work / "s.csv")
    before = _files(tmp_path)
    bundle = train(TrainConfig(data=str(csv), model="seed_bn_cnn", image_size=32, epochs=1, batch_size=8,
                               runs_dir=str(work / "runs"), name="r", augment=False, recipe="off")).bundle_path
    outputs = {"eval": ["evaluate", bundle, "--data", csv, "--out", work / "eval", "--explain", "gradcam",
                        "--n-boot", "20"],
               "explain": ["explain", bundle, *frame["path"][:3], "--out", work / "explain"],
               "pred.csv": ["predict", bundle, *frame["path"][:3], "--out", work / "pred.csv"]}
    for args in outputs.values():
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    transfer_matrix(save_manifest(domains, work / "m.csv"), work / "transfer", domain_col="organ", n_boot=20,
                    train_config=TrainConfig(recipe="off", model="seed_bn_cnn", image_size=32, epochs=1,
                                             batch_size=8, augment=False))
    allowed = [work / "runs", work / "eval", work / "explain", work / "pred.csv", work / "transfer", work / "s.csv",
               work / "m.csv"]
    new = _files(tmp_path) - before
    outside = [p for p in new if not any(p == a or a in p.parents for a in allowed)]
    assert new and not outside, outside[:5]
    assert len(list((work / "eval").rglob("panel_*.png"))) == 4  # one panel per class, none overwritten
