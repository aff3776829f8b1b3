"""H&E stain jitter (training) and stain shifts (robustness): changes colour in stain space, not shapes."""

import numpy as np
import pytest
import torch
from PIL import Image

from oncolens.data import Augmentation, Preprocessing, build_transforms
from oncolens.data.perturb import get_perturbation
from oncolens.data.stain import RandomHEDJitter, hed_jitter


def _he_tile(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    tile = np.empty((64, 64, 3), np.uint8)
    tile[...] = (232, 160, 196)  # eosin-pink stroma
    yy, xx = np.mgrid[0:64, 0:64]
    for cy, cx in rng.integers(6, 58, (12, 2)):
        tile[(yy - cy) ** 2 + (xx - cx) ** 2 <= 9] = (96, 52, 142)  # haematoxylin-purple nuclei
    return tile


def test_zero_jitter_is_the_identity_up_to_rounding():
    tile = _he_tile()
    out = hed_jitter(tile, np.random.default_rng(0), sigma=0.0, bias=0.0)
    assert np.abs(out.astype(int) - tile).max() <= 2


def test_jitter_changes_colours_but_keeps_where_the_nuclei_are():
    tile = _he_tile()
    out = hed_jitter(tile, np.random.default_rng(3), sigma=0.3, bias=0.05)
    assert np.abs(out.astype(int) - tile).mean() > 3
    nuclei = (tile == (96, 52, 142)).all(-1)
    darkness = out.astype(float).mean(-1)
    assert darkness[nuclei].mean() < darkness[~nuclei].mean() - 30  # nuclei stay the dark structures


def test_the_training_transform_draws_from_torch_and_repeats_under_a_seed():
    pre = Preprocessing(size=64)
    transform = build_transforms(pre, True, Augmentation(hflip=False, rotation=0, zoom=0, contrast=0, hed=0.2))
    assert any(isinstance(t, RandomHEDJitter) for t in transform.transforms)
    image = Image.fromarray(_he_tile())
    torch.manual_seed(0)
    a = transform(image)
    torch.manual_seed(0)
    assert torch.equal(a, transform(image))
    assert not torch.equal(a, transform(image))


def test_stain_perturbation_is_registered_deterministic_and_leaves_grey_images():
    shift = get_perturbation("stain")
    image = Image.fromarray(_he_tile(1))
    assert np.array_equal(np.asarray(shift(image)), np.asarray(shift(image)))
    assert not np.array_equal(np.asarray(shift(image)), np.asarray(image))
    grey = image.convert("L")
    assert shift(grey) is grey
    with pytest.raises(Exception, match="unknown perturbation"):
        get_perturbation("stainless")


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_stain_normalisation_maps_a_shifted_tile_back_towards_the_target(method):
    from oncolens.data.stain import StainNormalise, fit_stain_normalisation

    target = _he_tile(5)
    stain = fit_stain_normalisation(method, Image.fromarray(target))
    assert stain[0] == method and all(np.isfinite(stain[1:]))
    shifted = hed_jitter(target, np.random.default_rng(9), sigma=0.4, bias=0.05)
    normalise = StainNormalise(stain)
    out = normalise(torch.from_numpy(shifted).permute(2, 0, 1).contiguous()).permute(1, 2, 0).numpy()
    before = np.abs(shifted.astype(float) - target).mean()
    after = np.abs(out.astype(float) - target).mean()
    assert after < before, (before, after)


def test_stain_normalisation_leaves_blank_tiles_alone_and_never_makes_nan():
    from oncolens.data.stain import StainNormalise, fit_stain_normalisation

    stain = fit_stain_normalisation("macenko", Image.fromarray(_he_tile(5)))
    blank = torch.full((3, 32, 32), 245, dtype=torch.uint8)
    assert torch.equal(StainNormalise(stain)(blank), blank)
    with pytest.raises(Exception, match="almost no stained tissue"):
        fit_stain_normalisation("macenko", Image.fromarray(np.full((32, 32, 3), 245, np.uint8)))


def test_a_bundle_carries_its_stain_normalisation_to_prediction(phantom_manifest, tmp_path):
    from oncolens.data import save_manifest, split
    from oncolens.models import load_bundle
    from oncolens.training import TrainConfig, train

    target = tmp_path / "target.png"
    Image.fromarray(_he_tile(5)).save(target)
    csv = save_manifest(split(phantom_manifest, test=0.25, val=0.2, seed=0), tmp_path / "s.csv")
    run = train(TrainConfig(data=str(csv), model="seed_cnn", image_size=32, epochs=1, batch_size=8, recipe="off",
                            runs_dir=str(tmp_path / "runs"), name="r", calibrate=False, tracking="none",
                            channels=3, stain_norm=f"reinhard:{target}"))
    bundle = load_bundle(run.bundle_path)
    assert bundle.preprocessing.stain[0] == "reinhard" and len(bundle.preprocessing.stain) == 7
    transform = build_transforms(bundle.preprocessing)
    assert any(type(t).__name__ == "StainNormalise" for t in transform.transforms)
    assert len(bundle.score(phantom_manifest["path"].tolist()[:4])) == 4
