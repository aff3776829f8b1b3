"""Hostile inputs, round 4: relative paths work everywhere. The command lines of the README's tour and of the user
guide (``docs/guide/``, where the README's details moved) run as users type them, from a temporary working
directory with relative paths, chained so that each one's output feeds the next; only options that make them
small and fast are appended (a later option overrides the documented one), and placeholders
(``runs/<name>/bundle``, ``BUNDLE``) name a run made here. Tiling at ``--mpp 0`` says so."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import time
import traceback
from pathlib import Path

import pytest
from typer.testing import CliRunner

from oncolens.apps.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = [ROOT / "docs" / "guide" / f"{page}.md" for page in (  # in the site's order
    "data", "training", "many-images", "evaluation", "trust", "explanations", "slides", "studies", "apps", "python",
    "performance", "caches", "development")]
TINY = ("--model", "seed_cnn", "--weights", "random", "--freeze", "full", "--head", "own", "--image-size", "32",
        "--epochs", "1", "--batch-size", "8", "--no-augment")


def readme_lines() -> list[str]:
    """Every command line of the bash blocks of the README, then of the user guide's pages, continuation lines
    joined."""
    text = "\n".join(page.read_text() for page in (README, *GUIDE))
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines += block.replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip()]


def readme(start: str, bundle: str = "runs/lite0/bundle", whole: bool = False) -> list[str]:
    """The first command line of the README, else of the user guide, that starts with ``start`` (is ``start``, with
    ``whole``), split as a shell does (its comment dropped), with its bundle placeholder naming ``bundle``."""
    commands = [shlex.split(line, comments=True) for line in readme_lines()]
    wanted = shlex.split(start)
    line = next((c for c in commands if (c == wanted if whole else " ".join(c).startswith(start))), None)
    assert line is not None, f"neither the README nor the user guide shows {start!r}: update this test with it"
    placeholders = {"runs/<name>/bundle", "runs/x/bundle", "BUNDLE", "old_bundle"}
    return [bundle if token in placeholders else token for token in line]


def oncolens(line: list[str], *extra: str, codes: tuple[int, ...] = (0,)) -> str:
    """Run one command line in this process, as typed, with ``extra`` options appended."""
    assert line[0] == "oncolens", line
    result = runner.invoke(app, [*line[1:], *extra])
    detail = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info and result.exit_code else ""
    assert result.exit_code in codes, f"{shlex.join(line + list(extra))}: exit {result.exit_code}\n{result.output}{detail}"
    assert "Traceback" not in result.output, result.output
    return result.output


def _polygon(x0: int, y0: int, x1: int, y1: int, label: str) -> dict:
    return {"type": "Feature", "properties": {"classification": {"name": label}},
            "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}}


def _copy_images(source: Path, target: Path, n: int) -> None:
    images = sorted(p for p in source.rglob("*.png") if not p.name.endswith(".mask.png"))[:n]
    for path in images:
        (target / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.parent.name / path.name)


def _has(*modules: str) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


def test_the_issue_s_tile_command_runs_from_the_slide_s_folder(tmp_path, monkeypatch):
    """`oncolens tile s.tif --out tiles --size 256 --slide-mpp 0.5` wrote one tile, then failed: the tile's path was
    resolved, --out was not."""
    pytest.importorskip("openslide")
    from oncolens.data import load_manifest
    from oncolens.data.phantoms import generate_slide

    monkeypatch.chdir(tmp_path)
    generate_slide("s.tif", size=1024, levels=2, tile=128, seed=1, mpp=None)
    output = oncolens(shlex.split("oncolens tile s.tif --out tiles --size 256 --slide-mpp 0.5"))
    manifest = load_manifest("tiles/manifest.csv")
    assert len(manifest) > 1 and f"{len(manifest)} tiles" in output
    written = Path("tiles/manifest.csv").read_text().splitlines()[1].split(",")[0]
    assert written.startswith("unlabelled/s_x"), written  # relative to the manifest's folder, as before
    assert all(Path(p).is_file() and Path(p).is_relative_to(tmp_path.resolve()) for p in manifest["path"])


@pytest.mark.slow
def test_readme_commands_run_as_typed_with_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # data: the phantoms, scanned and split as the README shows
    oncolens(readme("oncolens phantoms data/phantoms"), "--n", "48", "--size", "32")
    _copy_images(Path("data/phantoms/histo"), Path("lab"), 12)
    Path("labels.csv").write_text("file,dx,patient\n" + "".join(
        f"{p.as_posix()},{p.parent.name},{p.stem.split('_')[0]}\n" for p in sorted(Path("lab").rglob("*.png"))))
    oncolens(readme("oncolens scan labels.csv --layout csv"))  # relative paths in a CSV: from its folder
    assert Path("manifest.csv").read_text().count("\n") == 13
    oncolens(readme("oncolens scan data/phantoms --out manifest.csv"))
    oncolens(readme("oncolens split manifest.csv --out splits.csv --test 0.2"))
    # training: the README's run names and files, made tiny
    oncolens(readme("oncolens train splits.csv --name lite0"), "--model", "tf_efficientnet_lite0", "--weights",
             "imagenet", "--freeze", "frozen", "--head", "logreg", "--finetune", "off", "--epochs", "1",
             "--image-size", "32", "--batch-size", "8", "--no-augment")  # the linear probe: good enough to calibrate
    oncolens(readme("oncolens train splits.csv --model tf_efficientnet_lite0 --weights imagenet --freeze frozen "
                    "--head seed004"), "--epochs", "1", "--image-size", "32", "--batch-size", "8", "--no-augment",
             "--name", "seed004", "--no-calibrate")  # the guide's hand-set recipe
    assert Path("runs/lite0/bundle/bundle.json").is_file()
    oncolens(readme("oncolens train --resume runs/lite0"))
    Path("train.yaml").write_text("model: seed_cnn\nimage_size: 32\nbatch_size: 8\naugment: false\n")
    oncolens(readme("oncolens train splits.csv --config train.yaml"), "--epochs", "1", "--runs-dir", "myruns",
             "--cache-dir", "mycache", "--image-cache", "--name", "yaml")
    assert Path("myruns/yaml/bundle/bundle.json").is_file() and any(Path("mycache").iterdir())
    assert "images" in oncolens(["oncolens", "cache", "info", "--cache-dir", "mycache"])
    oncolens(readme("oncolens cache info"))
    # scoring
    _copy_images(Path("data/phantoms"), Path("scans"), 6)
    oncolens(readme("oncolens predict runs/lite0/bundle scans/ --top-k 3 --out predictions.csv"))
    assert Path("predictions.csv").read_text().count("\n") == 7
    _copy_images(Path("data/phantoms/mri"), Path("folder"), 4)
    oncolens(readme("oncolens predict BUNDLE folder/ --out preds.csv", whole=True))
    oncolens(readme("oncolens predict BUNDLE folder/ --out preds.csv --resume"))
    oncolens(readme("oncolens predict runs/x/bundle scans/ --alpha 0.05"))
    oncolens(readme("oncolens evaluate runs/x/bundle --data splits.csv"), "--n-boot", "20")
    assert Path("runs/lite0/eval-test/metrics.json").is_file()
    oncolens(readme("oncolens evaluate runs/lite0/bundle --data splits.csv --split test --explain gradcam"),
             "--n-boot", "20", "--per-class", "1", "--out", "eval")
    assert Path("eval/report.html").is_file()
    oncolens(readme("oncolens calibrate old_bundle --data splits.csv --split val"), "--split", "all",
             "--marginal")  # few images per class here
    oncolens(["oncolens", "scan", "data/phantoms/mri", "--out", "mri.csv"])
    oncolens(readme("oncolens evaluate-ood runs/x/bundle --in splits.csv"))
    assert Path("ood/report.html").is_file()
    _copy_images(Path("data/phantoms/histo"), Path("new_site"), 10)
    oncolens(readme("oncolens check runs/lite0/bundle new_site/"), "--out", "check.json", codes=(0, 3))  # the tour's
    oncolens(readme("oncolens check runs/x/bundle new_site/"), codes=(0, 3))
    assert json.loads(Path("check.json").read_text())
    oncolens(["oncolens", "scan", "new_site", "--out", "new_site_labelled.csv"])
    oncolens(readme("oncolens calibrate runs/x/bundle --data new_site_labelled.csv"))
    # explanations
    shutil.copy(next(Path("scans").rglob("*.png")), "scan.png")
    oncolens(readme("oncolens explain runs/lite0/bundle scan.png"), "--method", "gradcam")
    assert Path("explanations/scan.gradcam.heatmap.png").is_file()
    oncolens(readme("oncolens explain-panels runs/lite0/bundle --data splits.csv"), "--per-class", "1")
    assert list(Path("panels").glob("panel_*.png"))
    oncolens(readme("oncolens explain-eval runs/lite0/bundle --data splits.csv"), "--n-images", "2",
             "--out", "explain-eval.csv")
    assert Path("explain-eval.csv").is_file()
    # staging, export, the card
    Path("tnm.csv").write_text("path,label,tnm\n" + "".join(
        f"{p.as_posix()},{p.parent.name},T{1 + i % 3} N0 M0\n" for i, p in enumerate(sorted(Path("lab").rglob("*.png")))))
    oncolens(readme("oncolens stage tnm.csv --tnm-col tnm"))
    assert Path("staged.csv").read_text().count("\n") == 13
    if _has("onnx", "onnxruntime"):
        oncolens(readme("oncolens export runs/lite0/bundle --onnx onnx/"))
        assert Path("onnx/root.onnx").is_file()
        oncolens(["oncolens", "predict", "runs/lite0/bundle", "scan.png", "--backend", "onnx", "--onnx", "onnx"])
    assert oncolens(readme("oncolens card runs/lite0/bundle")).startswith("# Model card: lite0")
    # the files written here name their images wherever they are read from
    Path("elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    oncolens(["oncolens", "evaluate", "../runs/lite0/bundle", "--data", "../splits.csv", "--n-boot", "10",
              "--out", "again"])
    oncolens(["oncolens", "predict", "../runs/lite0/bundle", "../scan.png"])


@pytest.mark.slow
def test_readme_slide_commands_run_as_typed_with_relative_paths(tmp_path, monkeypatch):
    pytest.importorskip("openslide")
    from oncolens.data import load_manifest
    from oncolens.data.phantoms import generate_slide

    monkeypatch.chdir(tmp_path)
    Path("qupath_geojson").mkdir()
    for seed, name in enumerate(("slide1", "slide2")):
        generate_slide(f"{name}.svs", size=1024, levels=2, tile=256, seed=seed, vendor="aperio")
        Path(f"qupath_geojson/{name}.geojson").write_text(json.dumps(
            {"type": "FeatureCollection", "features": [_polygon(0, 0, 512, 1024, "tumour"),
                                                       _polygon(512, 0, 1024, 1024, "normal")]}))
    generate_slide("new_slide.svs", size=1024, levels=2, tile=256, seed=7, vendor="aperio")
    # tiles with their labels, a tile classifier, and whole-slide scoring
    oncolens(readme("oncolens tile slide1.svs slide2.svs --out tiles"))
    tiles = load_manifest("tiles/manifest.csv")
    assert set(tiles["label"]) == {"tumour", "normal"} and all(Path(p).is_file() for p in tiles["path"])
    oncolens(readme("oncolens split tiles/manifest.csv --out tiles/splits.csv"))
    oncolens(readme("oncolens train tiles/splits.csv --hed 0.05"), *TINY, "--channels", "3", "--name", "tiles")
    oncolens(readme("oncolens slide runs/<name>/bundle new_slide.svs --out slides/ --mpp 0.5", "runs/tiles/bundle"))
    assert Path("slides/new_slide/summary.json").is_file()
    oncolens(readme("oncolens evaluate runs/<name>/bundle --data tiles/splits.csv", "runs/tiles/bundle"),
             "--n-boot", "10", "--split", "all")
    # bags of slides (slide labels only), a bag classifier on them, and its predictions
    Path("slides_in").mkdir()
    for i in range(6):
        generate_slide(f"slides_in/s{i}.tif", size=512, levels=2, tile=128, seed=10 + i, tumour=i % 2 == 0)
    Path("slides.csv").write_text("path,label,group\n" + "".join(  # paths relative to the manifest's folder
        f"slides_in/s{i}.tif,{'tumour' if i % 2 == 0 else 'normal'},p{i}\n" for i in range(6)))
    oncolens(readme("oncolens features slides.csv --out bags"), "--model", "seed_cnn", "--weights", "random",
             "--input-size", "32")
    assert len(load_manifest("bags/bags.csv")) == 6
    oncolens(readme("oncolens train bags/bags.csv", whole=True), "--epochs", "1", "--name", "mil")
    oncolens(readme("oncolens predict runs/<name>/bundle new_slide.svs", "runs/mil/bundle"))
    oncolens(readme("oncolens slide runs/<name>/bundle new_slide.svs --out slides/", "runs/mil/bundle", whole=True),
             "--out", "mil-slides")
    assert Path("mil-slides/new_slide/summary.json").is_file()
    oncolens(readme("oncolens evaluate runs/<name>/bundle --data bags/bags.csv", "runs/mil/bundle"),
             "--n-boot", "10", "--split", "all", "--out", "mil-eval")
    assert Path("mil-eval/metrics.json").is_file()


@pytest.mark.slow
def test_readme_studies_and_cv_run_as_typed_with_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    oncolens(readme("oncolens phantoms data/phantoms"), "--n", "96", "--size", "32")
    oncolens(readme("oncolens scan data/phantoms --out manifest.csv"))
    oncolens(readme("oncolens split manifest.csv --out splits.csv --test 0.2"))
    oncolens(readme("oncolens cv manifest.csv --folds 5"), *TINY, "--folds", "2", "--n-boot", "10")
    _copy_images(Path("data/phantoms"), Path("scans"), 4)
    oncolens(readme("oncolens predict cv/ensemble_bundle scans/"))
    oncolens(readme("oncolens study compare splits.csv"), "--models", "seed_cnn", *TINY[2:], "--n-boot", "10")
    shutil.copy("manifest.csv", "multi.csv")
    oncolens(readme("oncolens study hierarchy multi.csv --levels organ,tumor"), *TINY, "--n-boot", "10")
    assert Path("study-hierarchy/hierarchical_bundle").is_dir()


@pytest.mark.parametrize("mpp", ["0", "0.5"])
def test_bags_at_level_0_say_so_when_a_slide_has_no_tissue_tile(tmp_path, monkeypatch, mpp):
    """`--mpp 0` (tiles at level 0's own resolution) said "no tissue tile at None um/px"."""
    pytest.importorskip("openslide")
    from oncolens.data.phantoms import generate_slide

    monkeypatch.chdir(tmp_path)
    generate_slide("slides/tumour/s.tif", size=512, levels=2, tile=128, seed=1)
    result = runner.invoke(app, ["features", "slides", "--out", "bags", "--model", "seed_cnn", "--weights", "random",
                                 "--input-size", "32", "--size", "512", "--min-tissue", "1", "--mpp", mpp])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "None" not in result.output, result.output
    assert ("level 0's resolution" if mpp == "0" else "0.5 um/px") in result.output, result.output


def test_tiling_at_level_0_is_level_0_not_none(tmp_path, monkeypatch):
    """`tile --mpp 0` tiles at the slide's own resolution (whatever its metadata says) and says where it tiled."""
    pytest.importorskip("openslide")
    from oncolens.data import load_manifest
    from oncolens.data.phantoms import generate_slide

    monkeypatch.chdir(tmp_path)
    generate_slide("s.tif", size=1024, levels=2, tile=128, seed=1, mpp=None)  # no resolution in its metadata
    oncolens(shlex.split("oncolens tile s.tif --out tiles --size 256 --mpp 0"))
    manifest = load_manifest("tiles/manifest.csv")
    assert len(manifest) and "None" not in Path("tiles/manifest.csv").read_text()
    result = runner.invoke(app, shlex.split("tile s.tif --out none --size 1024 --mpp 0 --min-tissue 1"))
    assert result.exit_code == 1 and "None" not in result.output and "no tile was written" in result.output


def test_serve_and_app_take_relative_paths(tiny_bundle, tmp_path, monkeypatch):
    """`serve BUNDLE --onnx onnx/ --slide-root slides --slide-output jobs` and `app BUNDLE --slides slides/` with
    paths relative to where they are started (servers are built, not started: uvicorn.run and execv are caught)."""
    pytest.importorskip("openslide")
    import os

    import uvicorn
    from fastapi.testclient import TestClient

    from oncolens.data.phantoms import generate_slide
    from tests.helpers import noise_image, save

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_bundle, "bundle")
    save(noise_image(48), Path("x.png"))
    generate_slide("slides/case1.tif", size=1024, levels=3, tile=128, seed=3)
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.setdefault("app", app))
    if _has("onnx", "onnxruntime"):
        oncolens(["oncolens", "export", "bundle", "--onnx", "onnx/"])
        oncolens(["oncolens", "serve", "bundle", "--backend", "onnx", "--onnx", "onnx/", "--slide-root", "slides",
                  "--slide-output", "jobs"])
    else:
        oncolens(["oncolens", "serve", "bundle", "--slide-root", "slides", "--slide-output", "jobs"])
    Path("elsewhere").mkdir()
    monkeypatch.chdir("elsewhere")  # what the server was told stays what it meant
    client = TestClient(started["app"])
    with open("../x.png", "rb") as image:
        assert client.post("/predict", files={"file": ("x.png", image, "image/png")}).status_code == 200
    answer = client.post("/slides", json={"path": "case1.tif", "mpp": 4.0})
    assert answer.status_code == 202, answer.text
    job, deadline = answer.json()["job"], time.monotonic() + 120
    while (state := client.get(f"/slides/{job}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert state["status"] == "done", state
    assert client.get(f"/slides/{job}/heatmap").status_code == 200
    assert (tmp_path / "jobs" / job).is_dir()
    monkeypatch.chdir(tmp_path)
    command = {}
    monkeypatch.setattr(os, "execv", lambda exe, argv: command.setdefault("argv", argv))
    oncolens(["oncolens", "app", "bundle", "--slides", "slides/"])
    bundle = command["argv"][command["argv"].index("--bundle") + 1]
    assert Path(bundle).is_absolute() and (Path(bundle) / "bundle.json").is_file()
    assert Path(os.environ["ONCOLENS_SLIDES"]).is_absolute() and Path(os.environ["ONCOLENS_SLIDES"]).is_dir()


def test_a_run_started_with_relative_files_resumes_from_any_folder(tiny_bundle, phantom_manifest, tmp_path,
                                                                   monkeypatch):
    """`train --weights bundle --stain-norm macenko:ref.png --cache-dir cache` recorded the paths as typed: `train
    --resume` from another folder then could not find the weights."""
    from oncolens.data import save_manifest, split
    from oncolens.training import load_config

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_bundle, "bundle")
    save_manifest(split(phantom_manifest, test=0.25, val=0.2, seed=0), Path("splits.csv"))
    histo = next(p for p in phantom_manifest["path"] if "histo" in Path(p).name)
    shutil.copy(histo, "ref.png")
    oncolens(["oncolens", "train", "splits.csv", "--model", "seed_cnn", "--weights", "bundle", "--image-size", "32",
              "--epochs", "1", "--batch-size", "8", "--no-augment", "--no-calibrate", "--name", "ft"])
    oncolens(["oncolens", "train", "splits.csv", "--model", "seed_cnn", "--channels", "3", "--image-size", "32",
              "--epochs", "1", "--batch-size", "8", "--no-augment", "--no-calibrate", "--stain-norm",
              "macenko:ref.png", "--cache-dir", "cache", "--name", "stained"])
    Path("elsewhere").mkdir()
    monkeypatch.chdir("elsewhere")
    for run in ("ft", "stained"):
        assert "bundle: ../runs" in oncolens(["oncolens", "train", "--resume", f"../runs/{run}", "--epochs", "2"])
    assert not any(Path(".").iterdir())  # nothing written where it was resumed from
    saved = load_config(tmp_path / "runs/stained/config.yaml")
    assert saved.stain_norm == f"macenko:{(tmp_path / 'ref.png').resolve()}"
    assert saved.cache_dir == str((tmp_path / "cache").resolve())
