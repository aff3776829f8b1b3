import numpy as np
import pytest
from PIL import Image

from oncolens.data.perturb import PERTURBATIONS, get_perturbation, register_perturbation
from oncolens.errors import ConfigError


@pytest.fixture()
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), "RGB")


def test_jpeg_keeps_size_and_mode_but_changes_pixels(image):
    out = get_perturbation("jpeg75")(image)
    assert out.size == image.size and out.mode == "RGB"
    difference = np.abs(np.asarray(out, int) - np.asarray(image, int)).mean()
    assert 1 < difference < 80
    assert np.array_equal(np.asarray(get_perturbation("jpeg75")(image)), np.asarray(out))  # deterministic
    grey = get_perturbation("jpeg50")(image.convert("L"))
    assert grey.mode == "L"


def test_resizing_scales_both_sides(image):
    assert get_perturbation("resize0.5")(image).size == (30, 20)
    assert get_perturbation("resize2")(image).size == (120, 80)
    assert get_perturbation("resize0.5-jpeg75")(image).size == (30, 20)


def test_names_are_checked_and_registration_refuses_overwrites():
    assert get_perturbation(None) is None and get_perturbation("none") is None
    with pytest.raises(ConfigError, match="unknown perturbation 'blur'.*jpeg75"):
        get_perturbation("blur")
    with pytest.raises(ConfigError, match="already registered"):
        register_perturbation("jpeg75", lambda im: im)
    assert "resize0.5" in PERTURBATIONS


def test_evaluate_scores_through_a_perturbation(tiny_bundle, phantom_manifest, tmp_path):
    from oncolens.evaluation import evaluate

    data = phantom_manifest.assign(split="test")
    clean = evaluate(tiny_bundle, data, out_dir=tmp_path / "clean", n_boot=0)
    shrunk = evaluate(tiny_bundle, data, out_dir=tmp_path / "shrunk", n_boot=0, perturb="resize0.5-jpeg75")
    assert "every image perturbed before scoring: resize0.5-jpeg75" in shrunk.notes
    a = clean.predictions[[c for c in clean.predictions.columns if c.startswith("prob_")]].to_numpy()
    b = shrunk.predictions[[c for c in shrunk.predictions.columns if c.startswith("prob_")]].to_numpy()
    assert a.shape == b.shape and not np.allclose(a, b)


def test_perturbations_act_on_the_stored_image_not_a_reduced_jpeg_decode(tiny_bundle, tmp_path):
    from oncolens.models import load_any_bundle

    rng = np.random.default_rng(1)
    smooth = np.kron(rng.integers(0, 256, (64, 64, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 512 px
    path = tmp_path / "large.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    bundle = load_any_bundle(tiny_bundle)
    shrunk = get_perturbation("resize0.5")(Image.open(path).convert("RGB"))
    expected = bundle.score([shrunk]).node_logits
    got = bundle.score([str(path)], perturb="resize0.5").node_logits
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5)
