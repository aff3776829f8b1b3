"""Run tracking: TensorBoard event files and an MLflow SQLite store, or neither (optional extras)."""

import pytest

from oncolens.errors import ConfigError
from oncolens.training import TrainConfig, train
from oncolens.training.tracking import available, open_trackers


def _run(tmp_path, phantom_manifest, tracking: str):
    from oncolens.data import save_manifest, split

    csv = save_manifest(split(phantom_manifest, test=0.25, val=0.2, seed=0), tmp_path / "s.csv")
    return train(TrainConfig(data=str(csv), model="seed_cnn", image_size=32, epochs=2, batch_size=8,
                             runs_dir=str(tmp_path / "runs"), name="r", augment=False, recipe="off",
                             calibrate=False, tracking=tracking))


@pytest.mark.skipif(not available("tensorboard"), reason="the tracking extra is not installed")
def test_tensorboard_gets_every_epoch(tmp_path, phantom_manifest):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tmp_path, phantom_manifest, "tensorboard")
    events = EventAccumulator(str(run.run_dir / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("loss/val_loss")]
    assert steps == [1, 2]
    assert [e.value for e in events.Scalars("loss/val_loss")] == pytest.approx(run.history["val_loss"].tolist())


@pytest.mark.skipif(not available("mlflow"), reason="the tracking extra is not installed")
def test_mlflow_gets_params_metrics_and_artefacts_in_a_sqlite_store(tmp_path, phantom_manifest):
    from mlflow.tracking import MlflowClient

    run = _run(tmp_path, phantom_manifest, "mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (logged,) = client.search_runs([client.get_experiment_by_name("oncolens").experiment_id])
    assert logged.data.params["model"] == "seed_cnn" and logged.info.status == "FINISHED"
    history = client.get_metric_history(logged.info.run_id, "val_loss")
    assert [m.step for m in history] == [1, 2]
    assert {a.path for a in client.list_artifacts(logged.info.run_id)} >= {"metrics.json", "config.yaml"}


def test_no_tracking_writes_nothing_and_unknown_or_missing_trackers_are_config_errors(tmp_path, phantom_manifest):
    run = _run(tmp_path, phantom_manifest, "none")
    assert not (run.run_dir / "tb").exists() and not (tmp_path / "runs" / "mlflow.db").exists()
    with pytest.raises(ConfigError, match="unknown tracking"):
        open_trackers("wandb", tmp_path, tmp_path, "x")
