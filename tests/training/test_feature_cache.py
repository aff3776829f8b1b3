import pytest
import torch

from oncolens.errors import OncolensError
from oncolens.training import FeatureCache


def fake_compute(calls, bad=()):
    def compute(positions):
        calls.append(list(positions))
        readable = [i for i in positions if i not in bad]
        return torch.tensor([[float(i), 2.0 * i] for i in readable]), readable
    return compute


@pytest.mark.parametrize("mode", ["disk", "memory"])
def test_features_are_computed_once_per_image_and_unreadable_ones_remembered(tmp_path, mode):
    cache = FeatureCache(tmp_path / "c", mode=mode)
    calls = []
    features, kept = cache.features("ns", ["a", "b", "c", "d"], fake_compute(calls, bad={2}))
    assert kept == [0, 1, 3] and features[:, 0].tolist() == [0.0, 1.0, 3.0]
    # a reordered subset plus one new image: only the new one is computed, the bad one is not retried
    features, kept = cache.features("ns", ["d", "c", "e", "a"], fake_compute(calls))
    assert calls == [[0, 1, 2, 3], [2]]
    assert kept == [0, 2, 3] and features[:, 0].tolist() == [3.0, 2.0, 0.0]
    assert (cache.hits, cache.misses) == (2, 5)  # the remembered unreadable image is not a hit
    # another namespace (another model or augmentation view) shares nothing
    cache.features("other", ["a"], fake_compute(calls))
    assert calls[-1] == [0]


def test_disk_shards_survive_a_new_cache_object(tmp_path):
    calls = []
    FeatureCache(tmp_path, mode="disk").features("ns", ["a", "b"], fake_compute(calls))
    again = FeatureCache(tmp_path, mode="disk")
    features, kept = again.features("ns", ["b", "a"], fake_compute(calls))
    assert calls == [[0, 1]] and kept == [0, 1] and features[:, 0].tolist() == [1.0, 0.0]
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(OncolensError, match="no readable"):
        again.features("ns2", ["x"], fake_compute(calls, bad={0}))


def _fake_entry(root, name: str, megabytes: float, age_days: float, about: dict | None = None):
    import json
    import os
    import time

    from oncolens.data.cache_marks import make_entry, mark_cache_root

    mark_cache_root(root.parent if root.name == "images" else root)
    folder = make_entry(root / name, "images" if root.name == "images" else "features")
    (folder / "shard.safetensors").write_bytes(b"\0" * int(megabytes * 1e6))
    if about is not None:
        (folder / ("info.json" if "shape" in about else "about.json")).write_text(json.dumps(about))
    stamp = time.time() - age_days * 86400
    os.utime(folder, (stamp, stamp))
    return folder


def test_the_cache_evicts_least_recently_used_entries_beyond_its_limit_but_never_the_runs_own(tmp_path):
    from oncolens.training.feature_cache import cache_entries, enforce_cache_limit

    old = _fake_entry(tmp_path, "old", 3, 9, {"model": "resnet50"})
    used = _fake_entry(tmp_path, "used", 3, 12, {"model": "seed_cnn"})  # oldest, but this run's own
    middle = _fake_entry(tmp_path, "middle", 3, 5, {"model": "tf_efficientnet_lite0"})
    images = _fake_entry(tmp_path / "images", "abc", 2, 1, {"images": 10, "shape": [10, 3, 224, 224]})
    entries = cache_entries(tmp_path)
    assert [e.path for e in entries] == [used, old, middle, images]
    assert [e.what for e in entries] == ["seed_cnn", "resnet50", "tf_efficientnet_lite0", "10 images at 224 px"]
    removed = enforce_cache_limit(tmp_path, int(6.5e6), keep=[used])
    assert [e.path for e in removed] == [old, middle]
    assert not old.exists() and not middle.exists() and used.exists() and images.exists()
    assert [e.path for e in cache_entries(tmp_path)] == [used, images]


def test_cache_info_and_clear_from_the_command_line(tmp_path):
    import json

    from typer.testing import CliRunner

    from oncolens.apps.cli import app

    _fake_entry(tmp_path, "a", 1, 10, {"model": "resnet50"})
    _fake_entry(tmp_path, "b", 2, 0, {"model": "seed_cnn"})
    runner = CliRunner()
    info = runner.invoke(app, ["cache", "info", "--cache-dir", str(tmp_path), "--json"])
    assert info.exit_code == 0, info.output
    data = json.loads(info.output)
    assert data["bytes"] >= 3e6 and [e["what"] for e in data["entries"]] == ["resnet50", "seed_cnn"]
    cleared = runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path), "--older-than", "7d"])
    assert cleared.exit_code == 0 and "removed 1 entries" in cleared.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".oncolens-cache") == ["b"]
    assert runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path), "--older-than", "soon"]).exit_code == 2
    assert runner.invoke(app, ["cache", "clear", "--cache-dir", str(tmp_path), "--yes"]).exit_code == 0
    assert [p.name for p in tmp_path.iterdir()] == [".oncolens-cache"]


def test_a_run_removes_other_entries_beyond_cache_max_gb(phantom_manifest, tmp_path):
    from oncolens.data import save_manifest, split
    from oncolens.training import TrainConfig, train
    from oncolens.training.feature_cache import cache_entries

    cache = tmp_path / "cache"
    stale = _fake_entry(cache, "stale", 5, 30, {"model": "vgg16"})
    csv = save_manifest(split(phantom_manifest, test=0.2, val=0.25, seed=0), tmp_path / "s.csv")
    train(TrainConfig(data=str(csv), model="seed_bn_cnn", image_size=32, freeze="frozen", head="logreg", epochs=1,
                      runs_dir=str(tmp_path / "runs"), name="r", augment=False, recipe="off", cache_dir=str(cache),
                      cache_max_gb=0.001))
    assert not stale.exists()
    assert [e.what for e in cache_entries(cache)] == ["seed_bn_cnn"]
