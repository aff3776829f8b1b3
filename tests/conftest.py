import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small phantom dataset (48 images, 48 px), made once per test session."""
    from oncolens.data import generate_phantoms

    return generate_phantoms(tmp_path_factory.mktemp("phantoms"), n=48, size=48, seed=0, per_patient=3)


@pytest.fixture(scope="session")
def phantom_manifest(phantom_dir) -> pd.DataFrame:
    from oncolens.data import scan

    return scan(phantom_dir).manifest


@pytest.fixture(scope="session")
def tiny_bundle(phantom_manifest, tmp_path_factory) -> Path:
    """A seed CNN (32 px) trained for a few seconds on the session phantoms: a real, calibrated bundle (its
    temperature well inside the bound a calibration must stay within), made once."""
    from oncolens.data import save_manifest, split
    from oncolens.training import TrainConfig, train

    tmp = tmp_path_factory.mktemp("tiny_bundle")
    csv = save_manifest(split(phantom_manifest, test=0.25, val=0.2, seed=0), tmp / "s.csv")
    return train(TrainConfig(data=str(csv), model="seed_cnn", image_size=32, epochs=6, lr=3e-3, batch_size=8,
                             runs_dir=str(tmp / "runs"), name="r", augment=False)).bundle_path


@pytest.fixture(scope="session")
def hierarchy_study_dir(phantom_manifest, tmp_path_factory) -> Path:
    """A hierarchy study (organ > tumour) of one-epoch 32 px seed CNNs on the session phantoms, made once."""
    from oncolens.data import save_manifest
    from oncolens.studies import hierarchy_study
    from oncolens.training import TrainConfig

    tmp = tmp_path_factory.mktemp("hierarchy")
    manifest = save_manifest(phantom_manifest, tmp / "m.csv")
    hierarchy_study(manifest, tmp / "study", levels=["organ", "tumor"], n_boot=10,
                    train_config=TrainConfig(model="seed_cnn", image_size=32, epochs=1, batch_size=8, augment=False))
    return tmp / "study"


@pytest.fixture(scope="session")
def hierarchical_bundle(hierarchy_study_dir) -> Path:
    return hierarchy_study_dir / "hierarchical_bundle"


@pytest.fixture(scope="session")
def histology_bundle(tmp_path_factory) -> Path:
    """A calibrated histology-only bundle (the self-configured default: Lite0 probe, OOD detectors) on
    48 px histology phantoms, with enough validation images for prediction sets at alpha 0.1."""
    from oncolens.data import generate_phantoms, save_manifest, scan, split
    from oncolens.training import TrainConfig, train

    tmp = tmp_path_factory.mktemp("histology_bundle")
    root = generate_phantoms(tmp / "ph", n=200, size=48, seed=11, per_patient=2)
    manifest = scan(root / "histo").manifest
    csv = save_manifest(split(manifest, test=0.2, val=0.3, seed=0), tmp / "s.csv")
    return train(TrainConfig(data=str(csv), runs_dir=str(tmp / "runs"), name="histo",
                             cache_dir=str(tmp / "cache"))).bundle_path


@pytest.fixture(scope="session")
def ood_images(tmp_path_factory, phantom_manifest) -> dict[str, list[str]]:
    """Images a histology model has never seen: MRI phantoms and natural photographs (skimage.data)."""
    from PIL import Image
    from skimage import data

    tmp = tmp_path_factory.mktemp("ood")
    natural = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins"):
        path = tmp / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(path)
        natural.append(str(path))
    mri = phantom_manifest[phantom_manifest["label"].str.startswith("mri")]["path"].tolist()[:8]
    return {"natural": natural, "mri": mri}
