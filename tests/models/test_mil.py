"""Bag heads, bag files and MIL bundles (fast: random features, no images)."""

import numpy as np
import pandas as pd
import pytest
import torch

from oncolens.errors import DataError
from oncolens.models.bags import read_bag, write_bag
from oncolens.models.mil import BAG_HEADS, BagClassifier, is_bag_manifest, load_mil_bundle, save_mil_bundle


@pytest.mark.parametrize("head", ["abmil", "clam-sb", "mean", "max"])
def test_every_bag_head_maps_a_bag_of_any_size_to_logits_attention_and_an_embedding(head):
    torch.manual_seed(0)
    model = BagClassifier(head, in_dim=32, n_classes=3, hidden=16).eval()
    for n in (1, 7, 300):
        logits, attention, embedding = model.explain(torch.randn(n, 32))
        assert logits.shape == (3,) and attention.shape == (n,) and embedding.shape == (16,)
        assert float(attention.sum()) == pytest.approx(1.0, abs=1e-5) and (attention >= 0).all()
        assert model(torch.randn(1, n, 32)).shape == (1, 3)
    assert head in BAG_HEADS


def test_attention_pooling_is_invariant_to_the_order_of_instances():
    torch.manual_seed(1)
    model = BagClassifier("abmil", in_dim=8, n_classes=2).eval()
    bag = torch.randn(20, 8)
    order = torch.randperm(20)
    a_logits, a_attention, _ = model.explain(bag)
    b_logits, b_attention, _ = model.explain(bag[order])
    assert torch.allclose(a_logits, b_logits, atol=1e-5) and torch.allclose(a_attention[order], b_attention, atol=1e-6)


def test_clam_adds_an_instance_loss_from_its_most_and_least_attended_instances():
    torch.manual_seed(2)
    model = BagClassifier("clam-sb", in_dim=8, n_classes=2).train()
    model(torch.randn(1, 30, 8))
    loss = model.head.extra_loss(torch.tensor(1))
    assert loss is not None and loss.requires_grad and float(loss) > 0
    assert BagClassifier("abmil", in_dim=8, n_classes=2).head.extra_loss(torch.tensor(1)) is None


def test_a_bag_file_round_trips_and_a_damaged_one_is_a_clear_error(tmp_path):
    arrays = {"features": np.random.default_rng(0).random((5, 4), dtype=np.float32),
              "coords": np.zeros((5, 4), np.float32), "tissue": np.ones(5, np.float32)}
    path = write_bag(tmp_path / "b.safetensors", arrays, {"extractor": {"model": "m"}, "source": "s.svs"})
    read, metadata = read_bag(path)
    assert np.array_equal(read["features"], arrays["features"]) and metadata["extractor"] == {"model": "m"}
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="cannot read the bag"):
        read_bag(path)


def test_a_mil_bundle_scores_bag_files_with_calibrated_probabilities_and_embeddings(tmp_path):
    torch.manual_seed(3)
    model = BagClassifier("abmil", in_dim=6, n_classes=2)
    spec = {"model": "m", "weights": "w", "preprocessing": {}}
    folder = save_mil_bundle(model, ["normal", "tumour"], spec, {"size": 32, "mpp": 1.0}, tmp_path / "bundle",
                             meta={"label_col": "label"})
    bags = []
    for i in range(3):
        arrays = {"features": np.random.default_rng(i).random((4 + i, 6), dtype=np.float32),
                  "coords": np.zeros((4 + i, 4), np.float32), "tissue": np.ones(4 + i, np.float32)}
        bags.append(str(write_bag(tmp_path / f"b{i}.safetensors", arrays, {"extractor": spec})))
    (tmp_path / "foreign.safetensors").write_bytes(b"")
    from oncolens.models import load_any_bundle

    loaded = load_any_bundle(folder)
    assert loaded.kind == "mil" and loaded.classes == ["normal", "tumour"]
    scores = loaded.score(bags + [str(tmp_path / "foreign.safetensors")], features=True)
    assert scores.probabilities.shape == (3, 2) and np.allclose(scores.probabilities.sum(1), 1)
    assert scores.features["root"].shape == (3, model.head.classifier.in_features)
    assert list(scores.unreadable) == [str(tmp_path / "foreign.safetensors")]
    assert load_mil_bundle(folder).info()["bag"] == {"size": 32, "mpp": 1.0}
    other = write_bag(tmp_path / "other.safetensors", {"features": np.zeros((2, 6), np.float32)},
                      {"extractor": {"model": "another", "weights": "w"}})
    assert str(other) in loaded.score([str(other)]).unreadable  # made by another extractor: refused, said why
    assert is_bag_manifest(pd.DataFrame({"path": bags, "label": ["a", "b", "a"]}))
    assert not is_bag_manifest(pd.DataFrame({"path": ["x.png"], "label": ["a"]}))
