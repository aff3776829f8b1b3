"""Checkpoints: stage index + stage state; run folders written before training became stages still resume."""

import io

import pandas as pd
import pytest
import torch

from oncolens.data import save_manifest, split
from oncolens.training import Callback, TrainConfig, resume, train


@pytest.fixture
def split_csv(phantom_manifest, tmp_path):
    return save_manifest(split(phantom_manifest, test=0.2, val=0.2, seed=0), tmp_path / "splits.csv")


class _Crash(Exception):
    pass


def _crash_at(epoch: int):
    def crash(state):
        if state.epoch == epoch:
            raise _Crash

    return crash


def _as_written_before_stages(run_dir):
    """Rewrite a run folder as oncolens wrote it before stages (commit 70b6e82): ``checkpoint.pt`` flat, its
    ``stage`` one of probe/train/finetune and the optimizer state at the top level; no ``stages`` option in
    ``config.yaml``."""
    path = run_dir / "checkpoint.pt"
    new = torch.load(path, weights_only=True)
    assert new["format"] == 2 and new["stage"] in ("probe", "train", "finetune")
    old = {"epoch": new["epoch"], "model": new["model"], "scheduler": new["stage_state"].get("scheduler", {}),
           "optimizer": new["stage_state"].get("optimizer", {}), "scaler": new["scaler"],
           "best_val": new["best_val"], "best_epoch": new["best_epoch"], "bad_epochs": new["bad_epochs"],
           "stage": new["stage"]}
    buffer = io.BytesIO()
    torch.save(old, buffer)
    path.write_bytes(buffer.getvalue())
    config = run_dir / "config.yaml"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if not line.startswith(("stages:", "# stages:"))))


COLUMNS = ["epoch", "stage", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


def test_the_checkpoint_records_the_stage_index_and_its_state(split_csv, tmp_path):
    config = TrainConfig(data=str(split_csv), model="seed_cnn", image_size=32, epochs=2, batch_size=8, lr=1e-3,
                         runs_dir=str(tmp_path / "runs"), name="r", augment=False, recipe="off")
    run = train(config).run_dir
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert (state["format"], state["stage_index"], state["stage"], state["epoch"]) == (2, 0, "train", 1)
    assert set(state["stage_state"]) == {"optimizer", "scheduler"} and state["history_rows"] == 2


def test_a_checkpoint_written_before_stages_resumes_like_the_uninterrupted_run(split_csv, tmp_path):
    options = dict(data=str(split_csv), model="seed_cnn", image_size=32, epochs=4, batch_size=8, lr=1e-3,
                   runs_dir=str(tmp_path / "runs"), patience=10, augment=False, recipe="off")
    reference = train(TrainConfig(name="reference", **options))
    with pytest.raises(_Crash):
        train(TrainConfig(name="old", **options), callbacks=[_crash_at(1)])
    _as_written_before_stages(tmp_path / "runs" / "old")
    resumed = resume(tmp_path / "runs" / "old")
    pd.testing.assert_frame_equal(resumed.history[COLUMNS], reference.history[COLUMNS])
    assert (resumed.val_loss, resumed.best_epoch) == (reference.val_loss, reference.best_epoch)


class _CrashAfter(Callback):
    """Crash after the checkpoint of the first epoch of ``stage`` (the probe's is epoch -1 of a two-stage run)."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_epoch_end(self, run, row, epoch):
        if row["stage"] == self.stage:
            raise _Crash


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["probe", "finetune"])
def test_an_old_two_stage_checkpoint_resumes_in_the_stage_it_was_in(phantom_manifest, tmp_path, stage):
    csv = save_manifest(split(phantom_manifest, test=0.2, val=0.25, seed=0), tmp_path / "s.csv")
    options = dict(data=str(csv), runs_dir=str(tmp_path / "runs"), model="tf_efficientnet_lite0", image_size=64,
                   head="logreg", freeze="frozen", finetune="last-2", epochs=2, lr=3e-4, patience=5, batch_size=8,
                   cache_dir=str(tmp_path / "cache"))
    reference = train(TrainConfig(name="reference", **options))
    with pytest.raises(_Crash):
        train(TrainConfig(name="old", **options), callbacks=[_CrashAfter(stage)])
    _as_written_before_stages(tmp_path / "runs" / "old")
    assert torch.load(tmp_path / "runs" / "old" / "checkpoint.pt", weights_only=True)["stage"] == stage
    resumed = resume(tmp_path / "runs" / "old")
    pd.testing.assert_frame_equal(resumed.history[COLUMNS], reference.history[COLUMNS], rtol=1e-5)
    assert resumed.val_loss == pytest.approx(reference.val_loss, rel=1e-5)
