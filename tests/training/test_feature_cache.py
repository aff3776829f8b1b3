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
