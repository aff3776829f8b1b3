import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oncolens.data import save_manifest, split
from oncolens.training import TrainConfig, resume, train

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def split_csv(phantom_manifest, tmp_path) -> Path:
    return save_manifest(split(phantom_manifest, test=0.2, val=0.2, seed=0), tmp_path / "splits.csv")


def tiny(split_csv, tmp_path, **kw) -> TrainConfig:
    base = dict(data=str(split_csv), model="seed_cnn", image_size=32, epochs=3, batch_size=8, lr=1e-3,
                runs_dir=str(tmp_path / "runs"), name="run", patience=10, augment=False)
    base.update(kw)
    return TrainConfig(**base)


def test_run_folder_contents(split_csv, tmp_path):
    result = train(tiny(split_csv, tmp_path))
    run = result.run_dir
    for name in ("config.yaml", "classes.json", "history.csv", "curves.png", "checkpoint.pt", "best.safetensors",
                 "metrics.json", "splits.csv", "bundle/model.safetensors", "bundle/bundle.json"):
        assert (run / name).exists(), name
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"} <= set(history.columns)
    assert result.best_epoch == int(history["val_loss"].idxmin()) + 1
    assert result.val_loss == pytest.approx(history["val_loss"].min(), rel=1e-4)  # best weights restored
    assert json.loads((run / "classes.json").read_text()) == ["histo_normal", "histo_tumor", "mri_normal", "mri_tumor"]


def test_same_seed_same_history(split_csv, tmp_path):
    a = train(tiny(split_csv, tmp_path, name="a", augment=True)).history
    b = train(tiny(split_csv, tmp_path, name="b", augment=True)).history
    cols = ["train_loss", "train_accuracy", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(a[cols], b[cols])


def test_existing_run_is_not_overwritten(split_csv, tmp_path):
    train(tiny(split_csv, tmp_path, epochs=1))
    with pytest.raises(FileExistsError, match="resume"):
        train(tiny(split_csv, tmp_path, epochs=1))


def test_unsplit_manifest_is_split_by_patient(phantom_manifest, tmp_path):
    csv = save_manifest(phantom_manifest, tmp_path / "m.csv")
    result = train(tiny(csv, tmp_path, epochs=1))
    used = pd.read_csv(result.run_dir / "splits.csv")
    assert set(used["split"]) == {"train", "val", "test"}
    assert (used.groupby("group")["split"].nunique() == 1).all()


def test_frozen_backbone_uses_feature_cache(split_csv, tmp_path):
    cfg = tiny(split_csv, tmp_path, model="tf_efficientnet_lite0", weights="imagenet", freeze="frozen",
               feature_cache="disk", cache_dir=str(tmp_path / "cache"), name="c1", head="seed004")
    first = train(cfg)
    assert json.loads((first.run_dir / "metrics.json").read_text())["feature_cache"] is True
    cached_files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(cached_files) == 2  # train + val
    stamps = [f.stat().st_mtime_ns for f in cached_files]
    cfg.name = "c2"
    second = train(cfg)
    assert [f.stat().st_mtime_ns for f in sorted((tmp_path / "cache").rglob("*.safetensors"))] == stamps  # reused
    pd.testing.assert_frame_equal(first.history[["train_loss", "val_loss"]], second.history[["train_loss", "val_loss"]])
    # the same run without the cache gives the same validation losses (features are the same)
    cfg.name, cfg.feature_cache = "c3", "off"
    uncached = train(cfg)
    assert np.allclose(uncached.history["val_loss"].iloc[0], first.history["val_loss"].iloc[0], atol=1e-4)


def test_feature_cache_shares_images_never_labels(split_csv, tmp_path):
    # same images, same backbone, other labels (organ vs the 4 classes), then a subset of the images:
    # features are computed once per image, and every run trains on its own labels
    cfg = tiny(split_csv, tmp_path, model="tf_efficientnet_lite0", weights="imagenet", freeze="frozen", epochs=1,
               feature_cache="disk", cache_dir=str(tmp_path / "cache"), name="organ", label_col="organ")
    organ = train(cfg)
    assert organ.classes == ["histo", "mri"]
    shards = sorted((tmp_path / "cache").rglob("*.safetensors"))
    cfg.name, cfg.label_col = "label", "label"
    result = train(cfg)
    assert result.classes == ["histo_normal", "histo_tumor", "mri_normal", "mri_tumor"]
    assert sorted((tmp_path / "cache").rglob("*.safetensors")) == shards  # nothing recomputed
    frame = pd.read_csv(split_csv, keep_default_na=False)
    histo = save_manifest(frame[frame["organ"] == "histo"], tmp_path / "histo.csv")
    cfg.name, cfg.data = "histo", str(histo)
    subset = train(cfg)
    assert subset.classes == ["histo_normal", "histo_tumor"]
    assert sorted((tmp_path / "cache").rglob("*.safetensors")) == shards
    # a model trained on cached features equals one trained without the cache
    cfg.name, cfg.feature_cache = "uncached", "off"
    uncached = train(cfg)
    np.testing.assert_allclose(uncached.history["val_loss"], subset.history["val_loss"], atol=1e-4)


def test_augmented_views_cached(split_csv, tmp_path):
    cfg = tiny(split_csv, tmp_path, model="tf_efficientnet_lite0", weights="imagenet", freeze="frozen",
               augment=True, cache_views=2, cache_dir=str(tmp_path / "cache"), feature_cache="memory")
    result = train(cfg)
    assert json.loads((result.run_dir / "metrics.json").read_text())["feature_cache"] is True


def test_class_weights_and_balanced_sampling_run(split_csv, tmp_path):
    result = train(tiny(split_csv, tmp_path, epochs=1, class_weights=True, balanced_sampling=True, optimizer="adamw"))
    assert np.isfinite(result.val_loss)


def _bundle_outputs_script(bundle: Path, images: list[str]) -> str:
    return textwrap.dedent(f"""
        import json
        from oncolens.predictor import Predictor
        predictions, failed = Predictor.from_bundle({str(bundle)!r}).predict_files({images!r})
        print(json.dumps([p.probabilities for p in predictions]))
    """)


def test_bundle_round_trip_in_fresh_process(split_csv, tmp_path, phantom_manifest):
    result = train(tiny(split_csv, tmp_path, epochs=1))
    images = list(phantom_manifest["path"][:5])
    from oncolens.predictor import Predictor

    here = [p.probabilities for p in Predictor.from_bundle(result.bundle_path).predict_files(images)[0]]
    out = subprocess.run([sys.executable, "-c", _bundle_outputs_script(result.bundle_path, images)],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    there = json.loads(out.stdout)
    assert here == there


KILL_SCRIPT = """
import os, signal, sys
from oncolens.training import TrainConfig, train
cfg = TrainConfig(**{cfg!r})
def kill_after_second_epoch(state):
    if state.epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)
train(cfg, callbacks=[kill_after_second_epoch])
"""


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(split_csv, tmp_path):
    kw = dict(epochs=5, augment=True, patience=10)
    reference = train(tiny(split_csv, tmp_path, name="reference", **kw))
    cfg = tiny(split_csv, tmp_path, name="killed", **kw)
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT.format(cfg=cfg.to_dict())], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_dir = tmp_path / "runs" / "killed"
    assert len(pd.read_csv(run_dir / "history.csv")) == 2
    assert not (run_dir / "bundle").exists()
    resumed = resume(run_dir)
    cols = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]
    pd.testing.assert_frame_equal(resumed.history[cols], reference.history[cols])
    assert resumed.val_accuracy == reference.val_accuracy and resumed.val_loss == reference.val_loss
    assert resumed.best_epoch == reference.best_epoch


def test_resume_refuses_damaged_or_missing_checkpoints_with_the_reason(split_csv, tmp_path):
    from oncolens.errors import DataError

    run = train(tiny(split_csv, tmp_path, epochs=1)).run_dir
    checkpoint = run / "checkpoint.pt"
    data = checkpoint.read_bytes()
    for content, words in ((b"", "0 bytes"), (data[: len(data) // 2], "damaged")):
        checkpoint.write_bytes(content)
        with pytest.raises(DataError, match=words):
            resume(run)
    checkpoint.unlink()
    with pytest.raises(DataError, match="checkpoint.pt is missing"):
        resume(run)


def test_resume_can_extend_epochs_but_refuses_other_flags(split_csv, tmp_path):
    from typer.testing import CliRunner

    from oncolens.apps.cli import app

    run = train(tiny(split_csv, tmp_path, epochs=1)).run_dir
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--lr", "5"])
    assert result.exit_code == 2 and "only --epochs can change" in result.output and "--lr" in result.output
    result = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2]


def test_diverging_loss_stops_with_a_clear_message(split_csv, tmp_path):
    from oncolens.errors import DataError

    with pytest.raises(DataError, match="training diverged"):
        train(tiny(split_csv, tmp_path, lr=1e30, optimizer="sgd"))


@pytest.mark.parametrize("text, message", [
    ("epochs: ten\n", "'epochs' must be a whole number"),
    ("epochs: [1\n", "not valid YAML"),
    ("lr: -1\n", "'lr' must be positive"),
    ("augment: 3\n", "true or false"),
])
def test_bad_configuration_is_one_clear_line(split_csv, tmp_path, text, message):
    from typer.testing import CliRunner

    from oncolens.apps.cli import app

    config = tmp_path / "c.yaml"
    config.write_text(text)
    result = CliRunner().invoke(app, ["train", str(split_csv), "--config", str(config)])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["train", str(split_csv), "--epochs", "0"])
    assert result.exit_code == 2 and "--epochs must be at least 1" in result.output


def test_feature_cache_keeps_reporting_unreadable_images_on_later_runs(phantom_manifest, tmp_path):
    frame = split(phantom_manifest, test=0.2, val=0.2, seed=0)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    row = frame[frame["split"] == "train"].iloc[[0]].assign(path=str(bad))
    data = save_manifest(pd.concat([frame, row], ignore_index=True), tmp_path / "s.csv")
    cfg = tiny(data, tmp_path, model="tf_efficientnet_lite0", weights="imagenet", freeze="frozen", epochs=1,
               feature_cache="disk", cache_dir=str(tmp_path / "cache"), name="first")
    first = train(cfg)
    cfg.name = "second"
    second = train(cfg)  # every feature comes from the cache now
    for run in (first, second):
        unreadable = json.loads((run.run_dir / "metrics.json").read_text())["unreadable_files"]
        assert list(unreadable) == [str(bad)], run.run_dir


def test_a_callback_sees_the_run_and_adds_to_its_bundle_and_metrics(phantom_manifest, tmp_path):
    """The goal's example: one class that writes something every epoch and adds a metric at the end."""
    import json

    from oncolens.data import save_manifest, split
    from oncolens.training import Callback, TrainConfig, train

    class ValLossLog(Callback):
        name = "val-loss-log"

        def __init__(self):
            self.seen = []

        def on_epoch_end(self, state, row, epoch):
            self.seen.append((row["stage"], epoch))
            (state.run_dir / "val_loss.txt").open("a").write(f"{row['val_loss']}\n")

        def on_bundle(self, state, bundle, metrics):
            (bundle.path / "NOTE.txt").write_text("written by a callback")
            return {"val_loss_epochs": len(self.seen)}

    csv = save_manifest(split(phantom_manifest, test=0.2, val=0.25, seed=0), tmp_path / "s.csv")
    log = ValLossLog()
    result = train(TrainConfig(data=str(csv), model="seed_bn_cnn", image_size=32, epochs=2, batch_size=8,
                               runs_dir=str(tmp_path / "runs"), name="r", augment=False, recipe="off"),
                   callbacks=[log])
    assert log.seen == [("train", 0), ("train", 1)]
    assert len((result.run_dir / "val_loss.txt").read_text().split()) == 2
    assert json.loads((result.run_dir / "metrics.json").read_text())["val_loss_epochs"] == 2
    assert (result.bundle_path / "NOTE.txt").exists() and (result.bundle_path / "trust.json").exists()


def test_runs_are_stages_chosen_from_the_configuration(phantom_manifest, tmp_path):
    """The linear probe alone, the probe then fine-tuning, or gradient epochs alone: each a registered stage;
    ``stages`` names them explicitly and an unknown name is a ConfigError listing the known ones."""
    from oncolens.errors import ConfigError
    from oncolens.training.stages import STAGES, FinetuneStage, ProbeStage, TrainStage, stage_names

    assert {"probe", "train", "finetune"} <= set(STAGES.names())
    chosen = {}
    for name, options in {"probe": dict(head="logreg", freeze="frozen"),
                          "two-stage": dict(head="logreg", freeze="frozen", finetune="last-1"),
                          "gradient": dict(head="linear", freeze="full"),
                          "explicit": dict(head="logreg", freeze="frozen", finetune="last-1", stages="probe, train")}.items():
        config = TrainConfig(model="seed_bn_cnn", image_size=32, **options)
        chosen[name] = [STAGES.get(s) for s in stage_names(config)]
    assert chosen == {"probe": [ProbeStage], "two-stage": [ProbeStage, FinetuneStage], "gradient": [TrainStage],
                      "explicit": [ProbeStage, TrainStage]}
    with pytest.raises(ConfigError, match="unknown training stage 'mixup'.*probe"):
        stage_names(TrainConfig(stages="probe,mixup"))


def test_a_new_stage_is_one_registered_class(phantom_manifest, tmp_path):
    """A stage that trains the probe's head on cached features with its own loss (label smoothing): one class;
    the loop gives it the batches, the optimizer and the schedule."""
    from torch import nn

    from oncolens.training.batches import FeatureInputs
    from oncolens.training.stages import Stage, register_stage

    @register_stage
    class SmoothedHead(Stage):
        name = "smoothed-head-test"

        def __init__(self, run):
            super().__init__(run)
            self.inputs = FeatureInputs()
            self.losses = []

        def loss(self, state, logits, batch):
            loss = nn.functional.cross_entropy(logits.float(), batch.target, label_smoothing=0.2)
            self.losses.append(float(loss))
            return loss

    csv = save_manifest(split(phantom_manifest, test=0.2, val=0.25, seed=0), tmp_path / "s.csv")
    result = train(TrainConfig(data=str(csv), model="tf_efficientnet_lite0", weights="imagenet", image_size=32,
                               head="logreg", freeze="frozen", stages="probe,smoothed-head-test", epochs=2, lr=1e-3,
                               patience=5, runs_dir=str(tmp_path / "runs"), name="mix", augment=False, recipe="off",
                               cache_dir=str(tmp_path / "cache")))
    assert result.history["stage"].tolist() == ["probe", "smoothed-head-test", "smoothed-head-test"]
    assert result.history["lr"].tolist()[1:] == [1e-3, 1e-3] and (result.bundle_path / "trust.json").exists()
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["best_stage"] in ("probe", "smoothed-head-test") and metrics["feature_cache"] is True
