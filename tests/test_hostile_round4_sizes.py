"""Hostile inputs, round 4 (sizes and metadata): every size and count a user or a bundle gives is checked by one
function before any pixel is allocated, a slide's metadata is bounded before it is read and parsed once, and an
output folder that cannot be written is one clear line. Commands are run as users type them, from a temporary
working directory with relative paths."""

import json
import logging
import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from oncolens.apps.cli import app
from tests.helpers import noise_image, save

runner = CliRunner()


def _fails_cleanly(args: list[str], *words: str) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and all(w.lower() in result.output.lower() for w in words), result.output
    assert len(result.output.strip().splitlines()) <= 2, result.output  # the error (and a deprecation warning)
    return result.output


@pytest.fixture
def images(tmp_path, monkeypatch):
    """Three 64 px PNGs in ``imgs/`` under the working directory."""
    monkeypatch.chdir(tmp_path)
    for i in range(3):
        save(noise_image(64, seed=i), Path("imgs") / f"{i}.png")
    return Path("imgs")


# --- 3: sizes and counts ------------------------------------------------------------------------
def test_features_refuses_an_instance_size_before_any_work(images, monkeypatch):
    """`features imgs --size 100000` resized each image to 100000^2 pixels (killed at 19.9 GB)."""
    import oncolens.models.bags as bags

    def never(*args, **kwargs):
        raise AssertionError("the extractor was loaded: the size was not checked first")

    monkeypatch.setattr(bags, "load_extractor", never)
    _fails_cleanly(["features", images, "--size", "100000", "--out", "bags"], "--size", "1 to 8,192 pixels", "100000")
    assert not Path("bags").exists()


@pytest.mark.parametrize("args,words", [
    (["features", "imgs", "--size", "0"], ["--size", "1 to 8,192"]),
    (["features", "imgs", "--size", "-5"], ["--size", "-5"]),
    (["features", "imgs", "--batch-size", "0"], ["--batch-size", "1 to 4,096"]),
    (["features", "imgs", "--workers", "-1"], ["--workers", "0 to 1,024"]),
    (["features", "imgs", "--input-size", "100000"], ["--input-size", "8,192"]),
    (["predict", "nobundle", "imgs", "--batch-size", "0"], ["--batch-size"]),
    (["predict", "nobundle", "imgs", "--top-k", "0"], ["--top-k", "at least 1"]),
    (["slide", "nobundle", "s.tif", "--out", "o", "--batch-size", "-5"], ["--batch-size"]),
    (["tile", "s.tif", "--out", "t", "--size", "100000"], ["--size", "8,192"]),
    (["phantoms", "ph", "--size", "0"], ["--size"]),
    (["phantoms", "ph", "--n", "-5"], ["--n"]),
    (["explain", "nobundle", "imgs", "--n-samples", "0"], ["--n-samples"]),
    (["explain", "nobundle", "imgs", "--batch-size", "0"], ["--batch-size"]),
    (["evaluate", "nobundle", "--data", "m.csv", "--n-boot", "-1"], ["--n-boot"]),
    (["check", "nobundle", "imgs", "--batch-size", "0"], ["--batch-size"]),
    (["scan", "imgs", "--workers", "-5"], ["--workers"]),
    (["train", "m.csv", "--batch-size", "0"], ["--batch-size", "1 to 4,096"]),
    (["train", "m.csv", "--image-size", "100000"], ["--image-size", "8,192"]),
    (["cv", "m.csv", "--folds", "1"], ["--folds", "2 to 1,000"]),
    (["cv", "m.csv", "--workers", "0"], ["--workers", "--jobs"]),  # the old spelling of --jobs, checked as --jobs
    (["study", "compare", "m.csv", "--jobs", "0"], ["--jobs"]),
    (["study", "hierarchy", "m.csv", "--batch-size", "0"], ["--batch-size"]),
    (["serve", "nobundle", "--max-running", "0"], ["--max-running"]),
])
def test_sizes_and_counts_are_refused_with_their_range_before_any_work(images, args, words):
    _fails_cleanly(args, *words)
    assert sorted(os.listdir(".")) == ["imgs"]  # nothing was made


def test_every_whole_number_option_of_every_command_is_checked_or_is_not_a_count():
    """A new size or count option is covered by adding its name to LIMITS (a command cannot forget it)."""
    import typer
    from typer.core import TyperGroup, TyperOption

    from oncolens.apps.cli._base import CheckedCommand, limit_name

    not_counts = {"seed", "port", "opset", "level", "channels"}
    unchecked, plain = [], []

    def walk(command, prefix=""):
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                walk(sub, f"{prefix}{name} ")
            return
        for param in command.params:
            if isinstance(param, TyperOption) and param.type_descriptor.annotation is int:
                name = param.opts[0][2:].replace("-", "_")
                if limit_name(param) is None and name not in not_counts:
                    unchecked.append(f"{prefix}{param.opts[0]}")
                elif limit_name(param) and not isinstance(command, CheckedCommand):
                    plain.append(f"{prefix}{param.opts[0]}")

    walk(typer.main.get_command(app))
    assert not unchecked and not plain, (unchecked, plain)


def test_a_configuration_file_is_checked_by_the_same_function(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("c.yaml").write_text("batch_size: 0\nimage_size: 100000\n")
    Path("m.csv").write_text("path,label\n")
    _fails_cleanly(["train", "m.csv", "--config", "c.yaml"], "'batch_size'", "1 to 4,096")


def _mil_bundle(folder: Path, **changes) -> Path:
    from oncolens.models.mil import BagClassifier, save_mil_bundle

    spec = {"model": "seed_cnn", "weights": "random", "preprocessing": {}}
    save_mil_bundle(BagClassifier("abmil", in_dim=6, n_classes=2), ["normal", "tumour"], spec,
                    {"size": 32, "mpp": 1.0}, folder)
    info = json.loads((folder / "bundle.json").read_text())
    for dotted, value in changes.items():
        part, key = dotted.split("__")
        info[part][key] = value
    (folder / "bundle.json").write_text(json.dumps(info))
    return folder


@pytest.mark.parametrize("change,words", [
    ({"bag__size": 100000}, ["bag.size", "1 to 8,192 pixels", "100000"]),
    ({"bag__size": 0}, ["bag.size"]),
    ({"bag__size": "224"}, ["bag.size", "whole number"]),
    ({"bag__max_instances": 10**9}, ["bag.max_instances", "65,536"]),
    ({"bag__mpp": -1}, ["--mpp"]),
    ({"model__hidden": 5000}, ["model.hidden", "4,096"]),  # its attention layers are hidden^2 weights
    ({"model__num_classes": 0}, ["model.num_classes"]),
])
def test_a_crafted_mil_bundle_is_refused_when_it_is_loaded(tmp_path, monkeypatch, change, words):
    """bag.size 100000 would resize every upload to the API to 100000^2 pixels: refused at load, as the API
    loads it (Predictor.from_bundle) and as the command line does."""
    from oncolens.errors import BundleError
    from oncolens.predictor import Predictor

    monkeypatch.chdir(tmp_path)
    bundle = _mil_bundle(Path("crafted"), **change)
    with pytest.raises(BundleError) as raised:
        Predictor.from_bundle(bundle)
    assert all(w.lower() in str(raised.value).lower() for w in words) and "bundle.json" in str(raised.value)
    save(noise_image(64), Path("x.png"))
    _fails_cleanly(["predict", "crafted", "x.png"], *words)


def test_an_intact_mil_bundle_still_loads(tmp_path):
    from oncolens.models import load_any_bundle

    loaded = load_any_bundle(_mil_bundle(tmp_path / "b"))
    assert loaded.bag_spec == {"size": 32, "mpp": 1.0}


# --- unwritable output ----------------------------------------------------------------------------
def _stub_extraction(monkeypatch):
    """Bags made without a model (the writer is what these tests are about)."""
    import oncolens.models.bags as bags

    monkeypatch.setattr(bags, "load_extractor", lambda **kwargs: bags.Extractor(bundle=None, spec={"model": "stub"}))
    monkeypatch.setattr(bags, "extract_bag", lambda extractor, source, config, **kwargs: {
        "features": np.ones((2, 4), np.float32), "coords": np.zeros((2, 4), np.float32),
        "tissue": np.ones(2, np.float32)})


def test_features_into_a_folder_it_cannot_write_is_one_line(images, monkeypatch):
    import oncolens.models.bags as bags

    _stub_extraction(monkeypatch)

    def read_only(path, arrays, metadata):  # what a folder without write permission does (the tests run as root)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(bags, "write_bag", read_only)
    _fails_cleanly(["features", images, "--out", "bags"], "cannot write bags", "permission denied", "--out")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_features_into_a_read_only_folder_is_one_line(images, monkeypatch):
    _stub_extraction(monkeypatch)
    Path("bags").mkdir()
    Path("bags").chmod(0o555)
    try:
        _fails_cleanly(["features", images, "--out", "bags"], "cannot write bags", "--out")
    finally:
        Path("bags").chmod(0o755)


def test_features_still_writes_bags_with_the_stubs(images, monkeypatch):
    """The control of the two tests above: with a writable --out the same run succeeds."""
    _stub_extraction(monkeypatch)
    result = runner.invoke(app, ["features", str(images), "--out", "bags"])
    assert result.exit_code == 0, result.output
    assert len(list(Path("bags").glob("*.safetensors"))) == 3


# --- 4: slide metadata ----------------------------------------------------------------------------
def _ome_tiff(path: Path, junk: int = 0, description: str | None = None, size: int = 1024) -> Path:
    """A pyramidal OME-TIFF (two levels in SubIFDs, 0.5 um/px in its OME-XML) whose OME-XML carries ``junk``
    empty elements before its image (4 bytes each), or whose description is ``description``."""
    import tifffile

    from oncolens.data.phantoms import generate_slide

    normal = generate_slide(path.with_name(f"normal-{path.name}"), size=size, levels=2, tile=256, vendor="ome")
    with tifffile.TiffFile(normal) as tiff:
        own = tiff.pages.first.description
        levels = [level.asarray() for level in tiff.series[0].levels]
    normal.unlink()
    if description is None:
        head, image, tail = own.partition("<Image ")
        description = head + "<J/>" * junk + image + tail
    options = {"tile": (256, 256), "photometric": "rgb", "compression": "zlib", "metadata": None}
    with tifffile.TiffWriter(path) as writer:
        writer.write(levels[0], subifds=1, description=description.encode(), **options)
        writer.write(levels[1], subfiletype=1, **options)
    return path


@pytest.fixture
def parses(monkeypatch):
    """How often an OME-XML description is parsed."""
    pytest.importorskip("openslide")
    import oncolens.data.ome_tiff as ome_tiff

    calls = []
    real = ome_tiff._parse_ome_pixels

    def counted(description):
        calls.append(len(description))
        return real(description)

    monkeypatch.setattr(ome_tiff, "_parse_ome_pixels", counted)
    return calls


def test_a_60_mb_ome_xml_is_answered_in_seconds_without_being_read(tmp_path, monkeypatch, parses):
    """The report's file: 15 M empty elements (60 MB of OME-XML) ran past 240 s and 3.56 GB in `oncolens slide`;
    its length is read from the TIFF's directory and the file refused before tifffile or OpenSlide read it."""
    from oncolens.data.ome_tiff import MAX_DESCRIPTION
    from oncolens.data.slides import is_slide

    monkeypatch.chdir(tmp_path)
    path = _ome_tiff(Path("huge.ome.tif"), junk=15_000_000)
    assert path.stat().st_size > MAX_DESCRIPTION
    tracemalloc.start()
    started = time.monotonic()
    try:
        output = _fails_cleanly(["tile", "huge.ome.tif", "--out", "tiles", "--slide-mpp", "0.5"], "huge.ome.tif",
                                "ImageDescription of 57 MB", "longer than the 32 MB")
        assert is_slide(path)  # `features` refuses it the same way, with the reason, when it opens it
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 10 and peak < 100 << 20, (time.monotonic() - started, peak)
    assert parses == [] and "Traceback" not in output


def test_an_ome_xml_too_long_to_parse_is_ignored_with_one_warning_and_the_slide_still_tiles(
        tmp_path, monkeypatch, parses, caplog):
    """Past MAX_OME_XML (and below MAX_DESCRIPTION) the OME-XML is not parsed: the microns per pixel are unknown,
    said once, and --slide-mpp gives them; peak memory and time stay bounded."""
    from oncolens.data.ome_tiff import MAX_DESCRIPTION, MAX_OME_XML

    monkeypatch.chdir(tmp_path)
    _ome_tiff(Path("long.ome.tif"), junk=7_000_000)  # 28 MB: the longest kind of description still read
    assert MAX_OME_XML < Path("long.ome.tif").stat().st_size < MAX_DESCRIPTION
    caplog.set_level(logging.WARNING)
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = runner.invoke(app, ["tile", "long.ome.tif", "--out", "tiles", "--size", "128", "--slide-mpp", "0.5"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started < 10 and peak < 300 << 20, (time.monotonic() - started, peak)
    assert len(list(Path("tiles").rglob("*.png"))) > 0 and parses == []
    said = [r.getMessage() for r in caplog.records if "long.ome.tif" in r.getMessage()]
    assert len(said) == 1 and "microns per pixel" in said[0] and "--slide-mpp" in said[0], said
    _fails_cleanly(["tile", "long.ome.tif", "--out", "tiles2", "--size", "128"], "--slide-mpp")


def test_an_ome_xml_is_parsed_once_per_file_through_features(tmp_path, monkeypatch, parses, tiny_bundle):
    """`features` asks is_slide, opens the slide, lays the grid and reads its tiles through a second handle: the
    OME-XML (here 4 MB, the most parsed) is parsed once, in seconds."""
    from oncolens.data.ome_tiff import MAX_OME_XML

    monkeypatch.chdir(tmp_path)
    _ome_tiff(Path("slides") / "tumour" / "scan.ome.tif", junk=(MAX_OME_XML - 4096) // 4)
    started = time.monotonic()
    result = runner.invoke(app, ["features", "slides", "--out", "bags", "--bundle", str(tiny_bundle), "--size", "128",
                                 "--mpp", "0.5", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert len(parses) == 1 and parses[0] > MAX_OME_XML - 8192, parses
    assert time.monotonic() - started < 60  # the extraction included; the parse itself is about a second


def test_a_malformed_ome_xml_is_one_warning_not_tifffiles_two(tmp_path, monkeypatch, parses, caplog):
    """tifffile parsed the OME-XML of every TiffFile it opened and logged each ParseError (twice per file)."""
    monkeypatch.chdir(tmp_path)
    broken = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
              '<Image ID="Image:0" <<broken</OME>')
    _ome_tiff(Path("broken.ome.tif"), description=broken, size=512)
    caplog.set_level(logging.WARNING)
    result = runner.invoke(app, ["tile", "broken.ome.tif", "--out", "tiles", "--size", "128", "--slide-mpp", "0.5"])
    assert result.exit_code == 0, result.output
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and said[0].name.startswith("oncolens") and "broken.ome.tif" in said[0].getMessage(), \
        [(r.name, r.getMessage()) for r in said]
    assert "microns per pixel" in said[0].getMessage() and len(parses) == 1


def test_a_normal_ome_tiff_keeps_its_levels_and_mpp(tmp_path, parses):
    from oncolens.data.slides import open_slide, slide_info

    path = _ome_tiff(tmp_path / "scan.ome.tif", size=512)
    info = slide_info(open_slide(path), path)
    assert info.vendor == "ome-tiff" and info.mpp == pytest.approx(0.5) and len(info.level_dimensions) == 2
    assert len(parses) == 1


def test_the_tiff_directory_reader_finds_the_description_length(tmp_path):
    import tifffile

    from oncolens.data.ome_tiff import tiff_description_bytes

    image = np.zeros((64, 64, 3), np.uint8)
    for bigtiff in (False, True):
        path = tmp_path / f"d{bigtiff}.tif"
        with tifffile.TiffWriter(path, bigtiff=bigtiff) as writer:
            writer.write(image, subifds=1, description="x" * 5000, metadata=None, tile=(32, 32))
            writer.write(image[::2, ::2], subfiletype=1, description="y" * 9000, metadata=None, tile=(32, 32))
        assert tiff_description_bytes(path) == 9001, bigtiff  # the SubIFD's, with its NUL
    (tmp_path / "text.tif").write_text("not a tiff")
    (tmp_path / "loop.tif").write_bytes(b"II*\x00\x08\x00\x00\x00\x00\x00\x08\x00\x00\x00")  # an IFD pointing to itself
    assert tiff_description_bytes(tmp_path / "text.tif") == 0 and tiff_description_bytes(tmp_path / "loop.tif") == 0
