import pandas as pd
import pytest

from oncolens.data import save_manifest
from oncolens.models import pretrained as registry
from oncolens.studies import compare_models, compare_pretraining
from oncolens.training import TrainConfig

pytestmark = pytest.mark.slow


def test_architecture_comparison(phantom_manifest, tmp_path):
    manifest = save_manifest(phantom_manifest, tmp_path / "m.csv")
    base = TrainConfig(image_size=32, epochs=1, batch_size=8, augment=False)
    table = compare_models(manifest, tmp_path / "cmp", ["seed_cnn", "seed_bn_cnn", "tf_efficientnet_lite0"], base=base,
                           n_boot=10)
    assert set(table["run"]) == {"seed_cnn", "seed_bn_cnn", "tf_efficientnet_lite0"}
    assert (table["status"] == "ok").all()
    assert table["roc_auc"].is_monotonic_decreasing
    assert {"roc_auc_ci95", "f1", "accuracy", "train_seconds", "parameters"} <= set(table.columns)
    text = (tmp_path / "cmp" / "results.md").read_text()
    assert "| seed_cnn |" in text or "| seed_cnn | ok" in text


def test_random_vs_pretrained_reports_unavailable(phantom_manifest, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(registry, "_hub_cache_file", lambda *a, **k: None)
    manifest = save_manifest(phantom_manifest, tmp_path / "m.csv")
    base = TrainConfig(image_size=32, epochs=1, batch_size=8, augment=False)
    table = compare_pretraining(manifest, tmp_path / "pre", ["tf_efficientnet_lite0", "resnet50"], base=base,
                                n_boot=10)
    status = table.set_index("run")["status"]
    assert status["tf_efficientnet_lite0-imagenet"] == "ok" and status["tf_efficientnet_lite0-random"] == "ok"
    assert status["resnet50-imagenet"].startswith("unavailable") and status["resnet50-random"] == "ok"
    gains = pd.read_csv(tmp_path / "pre" / "gains.csv").set_index("run")
    assert pd.notna(gains.loc["tf_efficientnet_lite0", "accuracy_gain"])
    assert gains.loc["resnet50", "status"] == "pretrained weights unavailable offline"
    assert "Gain from pretraining" in (tmp_path / "pre" / "results.md").read_text()


@pytest.mark.slow
def test_architecture_comparison_by_cross_validation(phantom_manifest, tmp_path):
    import pandas as pd

    manifest = save_manifest(phantom_manifest, tmp_path / "m.csv")
    table = compare_models(manifest, tmp_path / "s", ["seed_cnn", "seed_bn_cnn"], folds=3, n_boot=20,
                           base=TrainConfig(epochs=1, batch_size=8, image_size=32, augment=False))
    assert list(table["status"]) == ["ok", "ok"]
    assert table["accuracy_ci95"].map(lambda ci: ci is not None and ci[0] <= ci[1]).all()
    assert {"accuracy_fold_sd", "train_seconds", "parameters"} <= set(table.columns)
    folds = [pd.read_csv(tmp_path / "s" / "cv" / m / "folds.csv") for m in ("seed_cnn", "seed_bn_cnn")]
    pd.testing.assert_frame_equal(folds[0][["path", "fold"]], folds[1][["path", "fold"]])  # the same folds
    assert "3-fold CV" in (tmp_path / "s" / "results.md").read_text()
