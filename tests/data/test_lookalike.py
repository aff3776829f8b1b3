"""Look-alike groups of embeddings: neighbours, the threshold chosen from the data, groups, split proximity."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from oncolens.data.lookalike import (MAX_SHARE, choose_threshold, lookalike_groups, nearest_neighbours,
                                     split_proximity)


def _copies(sources=60, copies=4, dim=256, noise=0.25, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((sources, dim))
    x = np.repeat(centres, copies, axis=0) + noise * rng.standard_normal((sources * copies, dim))
    return x, np.repeat(np.arange(sources), copies)


def test_neighbours_through_the_projection_match_brute_force():
    x, _ = _copies(sources=100, dim=300)  # wider than the 64-dimensional projection
    found = nearest_neighbours(x, k=5)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    exact = np.argsort(-similarity, axis=1)[:, :5]
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(found.index, exact)])
    assert recall >= 0.95
    assert np.allclose(found.similarity, np.take_along_axis(similarity, found.index, 1), atol=1e-5)
    assert (np.diff(found.similarity, axis=1) <= 1e-6).all()  # nearest first


def test_distinct_copies_are_found_exactly_and_the_reason_says_how():
    x, truth = _copies()
    groups = lookalike_groups(x)
    assert adjusted_rand_score(truth, groups.labels) == 1.0
    assert groups.n_groups == 60 and "stays at 60" in groups.reason and groups.threshold is not None


def test_chains_of_look_alikes_stop_before_one_group_holds_a_fold():
    """Look-alikes without clear gaps (slices along a scan): grouped transitively, but the threshold stops
    before a group holds more than a fifth of the images, so a grouped split stays possible."""
    rng = np.random.default_rng(1)
    walks = [np.cumsum(rng.standard_normal((40, 128)) * 0.35, axis=0) + rng.standard_normal(128) * 3 for _ in range(10)]
    x = np.concatenate(walks)
    threshold, reason = choose_threshold(nearest_neighbours(x))
    groups = lookalike_groups(x, threshold=threshold)
    assert groups.largest <= MAX_SHARE * len(x) and groups.n_groups < len(x) / 2
    assert "largest jump" in reason or "stays at" in reason


def test_a_given_threshold_and_duplicates_are_used_as_given():
    x, truth = _copies(sources=20, copies=3)
    alone = lookalike_groups(x, threshold=1.01)  # nothing is that similar: each image alone
    assert alone.n_groups == 60 and alone.reason.startswith("given")
    pairs = np.array([f"d{i // 2}" for i in range(60)])  # duplicates known from hashes: pairs 0-1, 2-3, ...
    merged = lookalike_groups(x, threshold=1.01, also=pairs)
    assert merged.n_groups == 30


def test_split_proximity_counts_held_out_images_with_a_training_look_alike():
    x, truth = _copies(sources=50, copies=2, seed=3)
    by_image = np.where(np.arange(len(x)) % 2 == 0, "train", "test")  # every test image's copy is in train
    by_source = np.where(truth < 40, "train", "test")
    threshold = lookalike_groups(x).threshold
    leaky, = split_proximity(x, by_image, threshold)
    clean, = split_proximity(x, by_source, threshold)
    assert leaky.near_copies == leaky.n == 50 and "optimistic" in leaky.sentence()
    assert clean.near_copies == 0 and "not inflated" in clean.sentence()
    assert np.median(clean.within_train) > 0.9 > 0.3 > np.median(clean.nearest_to_train)  # copies vs other sources
    assert np.median(leaky.nearest_to_train) > 0.9
    with pytest.raises(Exception, match="at least 2 training images"):
        split_proximity(x[:3], np.array(["train", "test", "test"]), threshold)
