import json

import numpy as np
from PIL import Image

from oncolens.data import generate_phantoms
from oncolens.data.layouts import MASK_SUFFIX
from oncolens.data.phantoms import render_phantom


def test_phantom_counts_masks_and_marker(phantom_dir, phantom_manifest):
    assert json.loads((phantom_dir / "PHANTOMS.json").read_text())["n"] == 48
    assert phantom_manifest["label"].value_counts().to_dict() == {
        "histo_normal": 12, "histo_tumor": 12, "mri_normal": 12, "mri_tumor": 12}
    for row in phantom_manifest.itertuples():
        mask = np.asarray(Image.open(row.mask_path)) > 0
        if row.label.endswith("tumor"):
            assert 0.005 < mask.mean() < 0.3
        else:
            assert not mask.any()
    assert set(phantom_manifest["mode"]) == {"RGB", "L"}


def test_lesion_changes_the_image_inside_the_mask():
    for family in ("histo", "mri"):
        image, mask = render_phantom(family, tumor=True, size=64, seed=1)
        gray = image.mean(-1) if image.ndim == 3 else image.astype(float)
        assert abs(gray[mask].mean() - gray[~mask].mean()) > 5, family


def test_generation_is_deterministic(tmp_path):
    a = generate_phantoms(tmp_path / "a", n=8, size=32, seed=5)
    b = generate_phantoms(tmp_path / "b", n=8, size=32, seed=5)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 16
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert all((a / rel).name.endswith(MASK_SUFFIX) or (a / rel.with_name(rel.stem + MASK_SUFFIX)).exists() for rel in files)


def test_patients_share_anatomy_within_family(phantom_manifest):
    per_patient = phantom_manifest.groupby("group")["label"].nunique()
    assert (per_patient == 1).all()
