import csv
import tracemalloc

import pytest

from oncolens.data import scan
from oncolens.data.scan import scan_to_csv
from oncolens.data.split import SplitError, split
from tests.helpers import make_bad_corpus, noise_image, save


def test_scan_reports_every_bad_file_and_keeps_good_ones(tmp_path):
    expected = make_bad_corpus(tmp_path)
    for i in range(2):
        save(noise_image(32, seed=10 + i), tmp_path / "cls b" / f"ok {i}.png")
    (tmp_path / "empty_class").mkdir()
    result = scan(tmp_path)
    kept = {p.split("/")[-1] for p in result.manifest["path"]}
    skipped = {s.path.split("/")[-1]: s.reason for s in result.skipped}
    for name, (outcome, detail) in expected.items():
        if outcome == "ok":
            assert name in kept, name
        else:
            assert detail in skipped[name], (name, skipped.get(name))
    assert any(p.endswith("empty_class") for p in result.summary.empty_class_folders)
    modes = dict(zip(result.manifest["path"].str.split("/").str[-1], result.manifest["original_mode"]))
    assert modes["cmyk.jpg"] == "CMYK" and modes["palette.png"] == "P" and modes["grey16.png"].startswith("I")
    assert result.summary.class_counts["cls b"] == 2


def test_manifest_columns(phantom_manifest):
    for col in ("path", "label", "organ", "subclass", "group", "width", "height", "mode", "sha256", "phash", "mask_path"):
        assert col in phantom_manifest.columns, col
    assert (phantom_manifest["mask_path"] != "").all()
    assert phantom_manifest["sha256"].str.len().eq(64).all()


def test_scan_to_csv_streams_rows(tmp_path, phantom_dir):
    out = tmp_path / "m.csv"
    summary = scan_to_csv(phantom_dir, out)
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == summary.n_images == 48
    assert not (tmp_path / "m.csv.tmp").exists()


def test_scan_memory_does_not_grow_with_files(tmp_path):
    def peak_for(n: int) -> int:
        root = tmp_path / f"d{n}"
        for i in range(n):
            save(noise_image(16, seed=i), root / ("a" if i % 2 else "b") / f"{i}.png")
        tracemalloc.start()
        scan_to_csv(root, root / "m.csv", workers=1)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    small, large = peak_for(100), peak_for(800)
    assert large < small * 2, (small, large)


def test_one_class_dataset_is_clear_error_at_split(tmp_path):
    for i in range(4):
        save(noise_image(32, seed=i), tmp_path / "only" / f"{i}.png")
    frame = scan(tmp_path).manifest
    with pytest.raises(SplitError, match="only one class"):
        split(frame)


def test_missing_root_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan(tmp_path / "nope")


def test_linked_class_folder_is_followed_once(tmp_path):
    data = tmp_path / "data"
    elsewhere = tmp_path / "elsewhere" / "tumor"
    for i in range(3):
        save(noise_image(16, seed=i), data / "normal" / f"n{i}.png")
        save(noise_image(16, seed=10 + i), elsewhere / f"t{i}.png")
    (data / "tumor").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(data, target_is_directory=True)  # a link back up must not loop
    result = scan(data, layout="folder")
    assert result.summary.class_counts == {"normal": 3, "tumor": 3}


def test_unreadable_folder_and_undecodable_names_are_reported_not_fatal(tmp_path, monkeypatch):
    import os

    for i in range(2):
        save(noise_image(16, seed=i), tmp_path / "normal" / f"n{i}.png")
        save(noise_image(16, seed=5 + i), tmp_path / "locked" / f"x{i}.png")
    bad_name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    save(noise_image(16, seed=9), tmp_path / "normal" / bad_name)
    real_scandir = os.scandir

    def scandir(path="."):
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    out = tmp_path / "m.csv"
    summary = scan_to_csv(tmp_path, out, layout="folder")
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in summary.to_dict()["skipped"]}
    assert "Permission denied" in reasons["locked"] and "not valid UTF-8" in reasons["caf\ufffd.png"]
    assert summary.class_counts == {"normal": 2}
    assert out.exists() and not list(tmp_path.glob(".m.csv*"))
