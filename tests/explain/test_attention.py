"""A bag classifier on a large image in memory (an upload) or on disk: the bag of its native-resolution crops,
the same probabilities either way, attention as its explanation (painted over the crops), and the API and
Predictor around it; image methods and the attention method refuse the wrong kind of model."""

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from oncolens.apps.api import create_app
from oncolens.errors import ConfigError
from oncolens.explain import explain, list_methods
from oncolens.explain.attention import attention_map
from oncolens.models import load_any_bundle
from oncolens.models.bags import BagConfig, extract_bag, load_extractor
from oncolens.models.mil import BagClassifier, save_mil_bundle
from oncolens.predictor import Predictor, png_bytes


@pytest.fixture(scope="module")
def mil_bundle(tiny_bundle, tmp_path_factory):
    """A gated-attention bag head (untrained, seeded) over the tiny bundle's backbone, bags of 32 px crops."""
    extractor = load_extractor(bundle=tiny_bundle)
    probe = extract_bag(extractor, Image.new("RGB", (64, 64), (200, 120, 160)), BagConfig(size=32, mpp=None))
    torch.manual_seed(0)
    model = BagClassifier("abmil", in_dim=probe["features"].shape[1], n_classes=2)
    return save_mil_bundle(model, ["normal", "tumour"], extractor.spec, BagConfig(size=32, mpp=None).to_dict(),
                           tmp_path_factory.mktemp("mil") / "bundle", meta={"label_col": "label"})


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """100 x 150 px: a 3 x 4 grid of 32 px crops (the edges beyond them left out) plus the whole image."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (100, 150, 3), np.uint8)
    pixels[:32, 96:128] = (60, 20, 120)  # one crop unlike the others
    return Image.fromarray(pixels)


def test_an_image_in_memory_and_its_file_are_the_same_bag(mil_bundle, image, tmp_path):
    image.save(tmp_path / "big.png")
    loaded = load_any_bundle(mil_bundle)
    in_memory, on_disk = loaded.score([image]), loaded.score([str(tmp_path / "big.png")])
    assert in_memory.probabilities.shape == (1, 2) and not in_memory.unreadable
    np.testing.assert_allclose(in_memory.probabilities, on_disk.probabilities, atol=1e-6)
    bag = loaded.attention(image)
    assert bag["coords"].shape == (13, 4) and bag["attention"].sum() == pytest.approx(1.0, abs=1e-5)
    assert bag["coords"][-1].tolist() == [0, 0, 150, 100]  # the whole image, last


def test_attention_is_the_explanation_of_a_bag_classifier(mil_bundle, image, tiny_bundle):
    loaded = load_any_bundle(mil_bundle)
    (e,) = explain(loaded, [image], method="attention")
    bag = loaded.attention(image)
    assert e.method == "attention" and e.heatmap.shape == (100, 150) and e.heatmap.max() == pytest.approx(1.0)
    assert e.extra == {"instances": 13, "whole_image_attention": pytest.approx(float(bag["attention"][-1]))}
    for (x, y, w, h), weight in zip(bag["coords"][:-1].astype(int), bag["attention"][:-1]):
        assert e.raw[y:y + h, x:x + w] == pytest.approx(weight)  # each crop painted where it lies
    assert e.raw[96:, :].max() == 0 and e.raw[:, 128:].max() == 0  # no crop there
    np.testing.assert_allclose(e.probabilities, loaded.score([image]).probabilities[0], atol=1e-6)
    (weighted,) = explain(loaded, [image], method="attention", target="tumour")
    assert weighted.target_class == "tumour" and weighted.raw.max() <= e.raw.max()
    with pytest.raises(ConfigError, match="image models"):
        explain(loaded, [image], method="gradcam")
    with pytest.raises(ConfigError, match="bag classifiers"):
        explain(load_any_bundle(tiny_bundle), [image], method="attention")
    assert "attention" not in list_methods() and list_methods("bags") == ["attention"]


def test_attention_maps_are_bounded_in_size_and_leave_the_whole_image_instance_out():
    painted, whole = attention_map(np.array([[0, 0, 5000, 5000], [0, 0, 20000, 10000]]), np.array([0.3, 0.7]),
                                   (20000, 10000))
    assert painted.shape == (256, 512) and whole == pytest.approx(0.7)
    assert painted[:128, :128].min() == pytest.approx(0.3) and painted[128:, :].max() == painted[:, 128:].max() == 0


def test_the_api_predicts_and_explains_an_upload_with_a_bag_classifier(mil_bundle, image):
    client = TestClient(create_app(Predictor.from_bundle(mil_bundle)))
    assert client.get("/model").json()["explanation_methods"] == ["attention"]
    upload = {"file": ("big.png", png_bytes(np.asarray(image)), "image/png")}
    predicted = client.post("/predict", files=upload)
    assert predicted.status_code == 200, predicted.text
    assert predicted.json()["label"] in ("normal", "tumour")
    explained = client.post("/explain?method=attention", files=upload)
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert body["method"] == "attention" and body["explained_by"]["instances"] == 13
    refused = client.post("/explain?method=gradcam", files=upload)
    assert 400 <= refused.status_code < 500 and "bag classifier" in refused.text


def test_the_explain_command_writes_attention_maps_and_names_the_methods_that_fit(mil_bundle, image, tmp_path):
    from typer.testing import CliRunner

    from oncolens.apps.cli import app

    image.save(tmp_path / "big.png")
    runner = CliRunner()
    done = runner.invoke(app, ["explain", str(mil_bundle), str(tmp_path / "big.png"), "--method", "attention",
                               "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.output
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"big.attention.heatmap.png", "big.attention.contours.png"}
    refused = runner.invoke(app, ["explain", str(mil_bundle), str(tmp_path / "big.png"), "--out", str(tmp_path / "o")])
    assert refused.exit_code == 2 and "attention" in refused.output and "Traceback" not in refused.output
