import json

import pandas as pd
import pytest
import yaml

from oncolens.data import generate_phantoms, save_manifest, scan, split
from oncolens.training import TrainConfig, train
from oncolens.training.config import PLAIN_DEFAULTS
from oncolens.training.recipe import FINETUNE_MIN_IMAGES, configure
from oncolens.training.trainer import resolve_config


@pytest.fixture(scope="module")
def by_family(tmp_path_factory):
    root = generate_phantoms(tmp_path_factory.mktemp("recipe"), n=48, size=40, seed=5, per_patient=2)
    manifest = scan(root).manifest
    return {f: manifest[manifest["label"].str.startswith(f)].reset_index(drop=True) for f in ("histo", "mri")}


def test_greyscale_mri_and_colour_histology_get_different_recipes_with_reasons(by_family):
    histo = configure(TrainConfig(), by_family["histo"])
    mri = configure(TrainConfig(), by_family["mri"])
    h, m = histo.config, mri.config
    assert (h.modality, m.modality) == ("histology", "mri")
    assert (h.hflip, h.vflip, h.rot90, h.colour, h.tta) == (True, True, True, 0.1, "flip")
    assert (m.hflip, m.vflip, m.rot90, m.colour, m.tta) == (True, False, False, 0.0, "none")
    assert "90-degree rotations" in histo.reasons["rot90"] and "stain" in histo.reasons["colour"]
    assert "anatomy has an up" in mri.reasons["vflip"]
    assert "histology" in histo.reasons["modality"] and "mri" in mri.reasons["modality"]
    # small data: the linear probe alone, and the reason says so
    assert h.head == "logreg" and h.freeze == "frozen" and h.finetune == "off"
    assert "too few" in histo.reasons["finetune"]
    assert h.model == "tf_efficientnet_lite0" and "median shorter side 40 px" in histo.reasons["model"]


def test_every_choice_yields_to_an_explicit_option(by_family):
    explicit = TrainConfig(hflip=False, rot90=False, tta="none", model="tf_efficientnet_lite1", head="linear",
                           modality="ct", class_weights=True)
    recipe = configure(explicit, by_family["histo"])
    c = recipe.config
    assert (c.hflip, c.rot90, c.tta, c.model, c.head, c.modality, c.class_weights) == (
        False, False, "none", "tf_efficientnet_lite1", "linear", "ct", True)
    assert not {"hflip", "rot90", "tta", "model", "head", "modality", "class_weights"} & set(recipe.reasons)
    assert c.vflip is False and "laterality" in recipe.reasons["vflip"]  # CT rules, since modality was given
    assert c.finetune is None and c.lr == 1e-3  # an SGD head: no probe stage


def test_recipe_off_is_the_plain_defaults(by_family):
    recipe = configure(TrainConfig(recipe="off"), by_family["histo"])
    assert recipe.reasons == {} and recipe.fingerprint is None
    resolved = resolve_config(recipe.config)
    for name, value in PLAIN_DEFAULTS.items():
        assert getattr(resolved, name) == value


def test_enough_images_add_a_fine_tuning_stage(by_family):
    big = pd.concat([by_family["histo"]] * 8, ignore_index=True)  # the same files, many rows: counts only
    big["split"] = ["val" if i % 10 == 0 else "train" for i in range(len(big))]
    assert (big["split"] == "train").sum() >= FINETUNE_MIN_IMAGES
    recipe = configure(TrainConfig(), big)
    c = recipe.config
    assert c.finetune == "last-3" and c.lr == 1e-4 and 3 <= c.epochs <= 8 and c.patience == 2
    assert "enough to gain" in recipe.reasons["finetune"]
    assert recipe.estimated_seconds and recipe.estimated_seconds > 0


def test_imbalance_turns_on_class_weights(by_family):
    part = by_family["mri"]
    skewed = pd.concat([part[part["label"] == "mri_normal"], part[part["label"] == "mri_tumor"].head(4)])
    recipe = configure(TrainConfig(), skewed)
    assert recipe.config.class_weights is True and ">= 1.5" in recipe.reasons["class_weights"]


def test_train_without_flags_prints_and_records_the_recipe(by_family, tmp_path, capsys):
    from rich.console import Console

    csv = save_manifest(split(by_family["mri"], test=0.2, val=0.2, seed=0), tmp_path / "mri.csv")
    console = Console(width=200, record=True)
    result = train(TrainConfig(data=str(csv), runs_dir=str(tmp_path / "runs"), name="auto"), console=console)
    printed = console.export_text()
    assert "recipe:" in printed and "modality=mri" in printed and "anatomy has an up" in printed
    text = (result.run_dir / "config.yaml").read_text()
    assert "# vflip: recipe: axial brain-like slices" in text
    config = yaml.safe_load(text)
    assert config["modality"] == "mri" and config["head"] == "logreg" and config["vflip"] is False
    recorded = json.loads((result.run_dir / "recipe.json").read_text())
    assert recorded["fingerprint"]["greyscale"] is True and recorded["chosen"]["head"]["value"] == "logreg"
    assert json.loads((result.bundle_path / "bundle.json").read_text())["meta"]["best_stage"] == "probe"


class _Crash(Exception):
    pass


def _two_stage(csv, tmp_path, name, **kw):
    options = dict(data=str(csv), runs_dir=str(tmp_path / "runs"), name=name, model="tf_efficientnet_lite0",
                   image_size=64, head="logreg", freeze="frozen", finetune="last-2", epochs=3, lr=3e-4, patience=5,
                   batch_size=8, cache_dir=str(tmp_path / "cache"))
    return TrainConfig(**{**options, **kw})


@pytest.mark.slow
def test_two_stage_keeps_the_better_stage_and_resumes_mid_fine_tuning(phantom_manifest, tmp_path):
    from oncolens.models import load_any_bundle

    csv = save_manifest(split(phantom_manifest, test=0.2, val=0.25, seed=0), tmp_path / "s.csv")
    reference = train(_two_stage(csv, tmp_path, "reference"))
    history = reference.history
    assert list(history["stage"]) == ["probe", "finetune", "finetune", "finetune"]
    assert list(history["epoch"]) == [0, 1, 2, 3]
    probe_loss = history["val_loss"].iloc[0]
    assert reference.val_loss == pytest.approx(history["val_loss"].min(), rel=1e-4)
    assert reference.val_loss <= probe_loss + 1e-6  # the probe (through cached features) or a better epoch
    assert reference.best_epoch == int(history["val_loss"].idxmin())
    metrics = json.loads((reference.run_dir / "metrics.json").read_text())
    assert metrics["best_stage"] == ("probe" if reference.best_epoch == 0 else "finetune")
    bundle = load_any_bundle(reference.bundle_path)
    assert bundle.score(pd.read_csv(csv)["path"].tolist()[:4]).probabilities.shape == (4, 4)

    def crash_after_first_finetune_epoch(state):
        if state.epoch == 0:
            raise _Crash

    with pytest.raises(_Crash):
        train(_two_stage(csv, tmp_path, "crashed"), callbacks=[crash_after_first_finetune_epoch])
    from oncolens.training import resume

    resumed = resume(tmp_path / "runs" / "crashed")
    cols = ["epoch", "stage", "train_loss", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(resumed.history[cols], history[cols], rtol=1e-5)
    assert resumed.val_loss == pytest.approx(reference.val_loss, rel=1e-5)


def test_finetune_without_a_probe_is_a_clear_error(phantom_manifest, tmp_path):
    from oncolens.errors import ConfigError

    csv = save_manifest(split(phantom_manifest, test=0.2, val=0.25, seed=0), tmp_path / "s.csv")
    with pytest.raises(ConfigError, match="second stage after a linear probe"):
        train(_two_stage(csv, tmp_path, "x", head="linear"))


def test_larger_backbones_need_many_large_images(by_family, monkeypatch):
    import oncolens.training.recipe as recipe_module

    monkeypatch.setattr(recipe_module, "fingerprint", lambda rows, **kw: recipe_module.DataFingerprint(
        n_images=len(rows), class_counts={"a": len(rows) // 2, "b": len(rows) - len(rows) // 2}, n_patients=None,
        median_side=512, greyscale_fraction=0.0, modality="histology", modality_evidence="test", sampled=10))
    small = configure(TrainConfig(), pd.DataFrame({"path": ["x"] * 600, "label": ["a", "b"] * 300}))
    assert small.config.model == "tf_efficientnet_lite0" and "only from 2,000" in small.reasons["model"]
    monkeypatch.setattr(recipe_module, "TIME_BUDGET_S", 1e9)
    large = configure(TrainConfig(), pd.DataFrame({"path": ["x"] * 4000, "label": ["a", "b"] * 2000}))
    assert large.config.model == "tf_efficientnet_lite2" and "<= the images' median shorter side 512" in \
        large.reasons["model"]


def test_probe_features_are_unaugmented_even_when_augmentation_is_on(phantom_manifest, tmp_path):
    """The probe is fitted on the images as they are (the cache key says 'no augmentation'): an augmenting
    recipe must not put augmented features under that key."""
    import numpy as np

    from oncolens.models import load_any_bundle

    csv = save_manifest(split(phantom_manifest, test=0.2, val=0.25, seed=0), tmp_path / "s.csv")
    run = train(TrainConfig(data=str(csv), runs_dir=str(tmp_path / "runs"), name="p", model="tf_efficientnet_lite0",
                            image_size=64, head="logreg", freeze="frozen", finetune="off", augment=True, hflip=True,
                            vflip=True, rot90=True, colour=0.2, tta="none", cache_dir=str(tmp_path / "cache")))
    bundle = load_any_bundle(run.bundle_path)
    rows = pd.read_csv(run.run_dir / "splits.csv", keep_default_na=False)
    scored = bundle.score(rows[rows["split"] == "train"], features=True)
    bank = bundle.trust.detectors["knn"].bank  # the training features the run used
    x = scored.features["root"] / np.linalg.norm(scored.features["root"], axis=1, keepdims=True)
    assert np.allclose((x @ bank.T).max(1), 1.0, atol=1e-4)
