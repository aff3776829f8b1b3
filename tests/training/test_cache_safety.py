"""`oncolens cache clear` and the cache's eviction only ever remove what the cache made (issue 33, item 2):
`--cache-dir runs` (a slip for runs/.feature_cache) once removed every trained run; `.` or `~` would have
done the same, and symbolic links were followed (counted and deleted)."""

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from oncolens.apps.cli import app
from oncolens.data.cache_marks import ENTRY_MARK, ROOT_MARK
from oncolens.training import FeatureCache
from oncolens.training.feature_cache import cache_entries, clear_cache, enforce_cache_limit

runner = CliRunner()


def _compute(positions):
    return torch.ones(len(positions), 4), list(positions)


def _feature_cache(root: Path, *namespaces: str) -> list[Path]:
    """Entries made by the cache itself (what a training run leaves)."""
    cache = FeatureCache(root, mode="disk")
    for namespace in namespaces:
        cache.features(namespace, ["a", "b"], _compute, about={"model": f"model-{namespace}"})
    return [root / n for n in namespaces]


def _trained_runs(runs: Path) -> None:
    for name in ("lite0", "seed_cnn"):
        (runs / name / "bundle").mkdir(parents=True)
        (runs / name / "bundle" / "bundle.json").write_text("{}")
        (runs / name / "bundle" / "model.safetensors").write_bytes(b"\0" * 100_000)
        (runs / name / "checkpoint.pt").write_bytes(b"\0" * 100_000)
        (runs / name / "metrics.json").write_text("{}")


def _everything(folder: Path) -> list[str]:
    """Every path under ``folder`` (links not followed), to compare before and after."""
    found = []
    for top, dirs, files in os.walk(folder):
        found += [os.path.relpath(os.path.join(top, n), folder) for n in dirs + files]
    return sorted(found)


def _refused(args: list[str], *words: str, listed: bool = False) -> str:
    """Exit code 2 with one line saying why (``listed``: after the list of what would have been removed)."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output and all(w.lower() in lines[-1].lower() for w in words), result.output
    assert lines[-1].startswith("error:") and (listed or len(lines) == 1), result.output
    return result.output


@pytest.mark.parametrize("yes", [[], ["--yes"]])
def test_clearing_the_runs_folder_is_refused_and_removes_nothing(tmp_path, monkeypatch, yes):
    monkeypatch.chdir(tmp_path)
    _trained_runs(Path("runs"))
    _feature_cache(Path("runs/.feature_cache"), "a" * 24)
    before = _everything(Path("runs"))
    _refused(["cache", "clear", "--cache-dir", "runs", *yes], "not an oncolens cache", "nothing removed",
             "runs/.feature_cache")
    _refused(["cache", "clear", "--cache-dir", "runs", "--older-than", "0s", *yes], "nothing removed")
    assert _everything(Path("runs")) == before
    with pytest.raises(Exception, match="nothing removed"):
        clear_cache("runs")
    assert enforce_cache_limit("runs", 0) == [] and cache_entries("runs") == []
    assert _everything(Path("runs")) == before


def test_clearing_the_working_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _trained_runs(Path("runs"))
    Path("notes.txt").write_text("mine")
    before = _everything(Path("."))
    _refused(["cache", "clear", "--cache-dir", ".", "--yes"], "not an oncolens cache", "nothing removed")
    assert _everything(Path(".")) == before


def test_a_symbolic_link_in_the_cache_is_neither_counted_nor_followed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    big = Path("big")  # what the link points at: it even looks like a cache entry
    big.mkdir()
    (big / ENTRY_MARK).write_text(json.dumps({"oncolens": "cache-entry", "content": "features"}))
    (big / "precious.bin").write_bytes(b"\0" * 3_000_000)
    (big / "sub").mkdir()
    (big / "sub" / "more.bin").write_bytes(b"\0" * 1_000_000)
    [entry] = _feature_cache(Path("cache"), "b" * 24)
    os.symlink(big.resolve(), Path("cache") / ("c" * 24))
    os.symlink(big.resolve(), entry / "inside")  # a link inside a real entry: removed, never followed
    (Path("cache") / "images").mkdir()
    os.symlink(big.resolve(), Path("cache/images") / ("d" * 24))
    before = _everything(big)

    info = runner.invoke(app, ["cache", "info", "--cache-dir", "cache", "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.output)
    assert data["marked"] and data["bytes"] < 100_000, data
    links = [e for e in data["entries"] if e["content"] == "link"]
    assert len(links) == 2 and all(not e["marked"] and e["megabytes"] == 0 for e in links)
    assert [e.path for e in cache_entries("cache")] == [entry]

    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", "cache", "--yes"])
    assert cleared.exit_code == 0, cleared.output
    assert "removed 1 entries" in cleared.output and "left 2" in cleared.output
    assert not entry.exists() and _everything(big) == before
    assert (Path("cache") / ("c" * 24)).is_symlink() and (Path("cache/images") / ("d" * 24)).is_symlink()


def test_clearing_everything_needs_yes_without_a_terminal_and_asks_on_one(tmp_path, monkeypatch):
    from oncolens.apps.cli import serving

    monkeypatch.chdir(tmp_path)
    entries = _feature_cache(Path("cache"), "e" * 24, "f" * 24)
    output = _refused(["cache", "clear", "--cache-dir", "cache"], "--yes", "nothing removed", listed=True)
    assert "will remove 2 entries" in output
    assert all(e.exists() for e in entries)

    monkeypatch.setattr(serving, "_interactive", lambda: True)
    declined = runner.invoke(app, ["cache", "clear", "--cache-dir", "cache"], input="n\n")
    assert declined.exit_code == 1 and "will remove 2 entries" in declined.output
    assert "nothing removed" in declined.output
    assert "model-" + "e" * 24 in declined.output  # what it would remove is said before asking
    assert all(e.exists() for e in entries)
    accepted = runner.invoke(app, ["cache", "clear", "--cache-dir", "cache"], input="y\n")
    assert accepted.exit_code == 0 and "removed 2 entries" in accepted.output, accepted.output
    assert not any(e.exists() for e in entries)


def test_older_than_runs_without_yes_when_no_terminal_is_there(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old, new = _feature_cache(Path("cache"), "1" * 24, "2" * 24)
    stamp = 1_000_000_000
    os.utime(old, (stamp, stamp))
    result = runner.invoke(app, ["cache", "clear", "--cache-dir", "cache", "--older-than", "7d"])
    assert result.exit_code == 0, result.output
    assert "will remove 1 entries" in result.output and "removed 1 entries" in result.output
    assert not old.exists() and new.exists()


def test_the_cache_marks_what_it_makes_and_clear_removes_only_that(tmp_path, monkeypatch, phantom_manifest):
    from oncolens.data.image_cache import DecodedImageCache
    from oncolens.data.transforms import Preprocessing

    monkeypatch.chdir(tmp_path)
    features = _feature_cache(Path("cache"), "3" * 24)
    images = DecodedImageCache(Path("cache/images"), phantom_manifest["path"].tolist()[:3], Preprocessing(size=32))
    assert (Path("cache") / ROOT_MARK).is_file()
    assert all((e / ENTRY_MARK).is_file() for e in (*features, images.folder))
    old = Path("cache") / ("4" * 24)  # an entry of an older oncolens (no mark) in the same cache
    old.mkdir()
    (old / "shard.safetensors").write_bytes(b"\0" * 2_000_000)
    info = runner.invoke(app, ["cache", "info", "--cache-dir", "cache", "--json"])
    data = json.loads(info.output)
    assert {e["entry"]: e["marked"] for e in data["entries"]} == {features[0].name: True, images.folder.name: True,
                                                                   old.name: False}
    assert data["bytes"] < 2_000_000  # the unmarked folder is listed, not counted
    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", "cache", "--yes"])
    assert cleared.exit_code == 0 and "removed 2 entries" in cleared.output, cleared.output
    assert "remove them by hand" in cleared.output and old.name in cleared.output
    assert not features[0].exists() and not images.folder.exists()
    assert (old / "shard.safetensors").stat().st_size == 2_000_000


def test_a_cache_from_before_the_marks_is_listed_and_refused_with_how_to_remove_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("5" * 24, "images/" + "6" * 24):
        Path("runs/.feature_cache", name).mkdir(parents=True)
        Path("runs/.feature_cache", name, "x.safetensors").write_bytes(b"\0" * 1000)
    before = _everything(Path("runs"))
    info = runner.invoke(app, ["cache", "info"])
    assert info.exit_code == 0 and "not marked" in info.output and "remove it by hand" in info.output, info.output
    _refused(["cache", "clear", "--yes"], "earlier", "nothing removed", "rm -r runs/.feature_cache")
    assert _everything(Path("runs")) == before


def test_eviction_skips_unmarked_folders_and_symbolic_links(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = Path("elsewhere")
    target.mkdir()
    (target / "data.bin").write_bytes(b"\0" * 5_000_000)
    marked_old, marked_new = _feature_cache(Path("cache"), "7" * 24, "8" * 24)
    os.utime(marked_old, (1_000_000_000, 1_000_000_000))
    unmarked = Path("cache") / ("9" * 24)
    unmarked.mkdir()
    (unmarked / "shard.safetensors").write_bytes(b"\0" * 5_000_000)
    os.utime(unmarked, (900_000_000, 900_000_000))  # the least recently used of all
    link = Path("cache") / ("0" * 24)
    os.symlink(target.resolve(), link)
    os.utime(link, (800_000_000, 800_000_000), follow_symlinks=False)
    removed = enforce_cache_limit("cache", 0, keep=[marked_new])
    assert [e.path for e in removed] == [marked_old]
    assert marked_new.exists() and (unmarked / "shard.safetensors").exists() and link.is_symlink()
    assert (target / "data.bin").stat().st_size == 5_000_000
