"""`oncolens check`: new images against the bundle's held-out calibration images, a verdict, and
recalibration on a new source's labelled images restoring the prediction sets' coverage."""

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from oncolens.data import generate_phantoms, scan
from oncolens.data.perturb import get_perturbation
from oncolens.evaluation.shift import check_new_data, mmd_test


def test_the_two_sample_test_tells_samples_apart_only_when_they_differ():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((150, 32)), rng.standard_normal((150, 32))
    _, same = mmd_test(a, b, permutations=200)
    _, moved = mmd_test(a, b + 0.5, permutations=200)
    assert same > 0.05 and moved < 0.01


@pytest.fixture(scope="module")
def new_sources(tmp_path_factory):
    """New histology phantoms (other patients, same generator) as they are and through a strong stain shift
    plus a blur-and-resize (another scanner), with their labels."""
    tmp = tmp_path_factory.mktemp("new_source")
    root = generate_phantoms(tmp / "ph", n=240, size=48, seed=99, per_patient=2, families=("histo",))
    same = scan(root / "histo").manifest[["path", "label"]]
    stain, resize = get_perturbation("stain-strong"), get_perturbation("resize0.5")
    shifted = []
    (tmp / "shifted").mkdir()
    for i, row in enumerate(same.itertuples()):
        path = tmp / "shifted" / f"{i:04d}.png"
        resize(stain(Image.open(row.path).convert("RGB"))).save(path)
        shifted.append({"path": str(path), "label": row.label})
    return same, pd.DataFrame(shifted)


def _coverage(bundle_dir, frame) -> float:
    from oncolens.evaluation.trust import coverage_report
    from oncolens.models import load_any_bundle

    bundle = load_any_bundle(bundle_dir)
    scores = bundle.score(frame["path"].tolist(), features=True)
    y = np.array([bundle.classes.index(v) for v in frame["label"].iloc[scores.positions]])
    return coverage_report(bundle.trust, scores, y, repeats=0)["scores"][bundle.trust.default_score]["coverage"]


@pytest.mark.slow
def test_check_tells_a_new_source_from_the_same_one_and_recalibration_restores_coverage(histology_bundle,
                                                                                        new_sources, tmp_path):
    from oncolens.training.calibrate import calibrate_bundle

    same, shifted = new_sources
    alike = check_new_data(histology_bundle, same["path"].head(120).tolist())
    moved = check_new_data(histology_bundle, shifted["path"].head(120).tolist())
    assert alike.verdict.startswith("like"), alike.lines()
    assert moved.verdict.startswith("shifted"), moved.lines()
    assert moved.nearest_similarity["0.5"] < alike.nearest_similarity["0.5"]
    assert any("oncolens calibrate" in line for line in moved.advice)

    bundle = tmp_path / "bundle"
    shutil.copytree(histology_bundle, bundle)
    labelled, held_out = shifted.iloc[::2], shifted.iloc[1::2]  # ~120 labelled images of the new source
    before = _coverage(bundle, held_out)
    calibrate_bundle(bundle, labelled, split="all", fit_split="keep")
    after = _coverage(bundle, held_out)
    assert after >= 0.85, (before, after)  # alpha 0.1: within 0.05 of 0.9 on the new source
    assert after > before or before >= 0.85, (before, after)
