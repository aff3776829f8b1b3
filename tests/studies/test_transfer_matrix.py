import pandas as pd
import pytest

from oncolens.data import save_manifest
from oncolens.studies import transfer_matrix
from oncolens.training import TrainConfig

pytestmark = pytest.mark.slow


def test_transfer_matrix_on_phantom_families_and_resume(phantom_manifest, tmp_path):
    manifest = save_manifest(phantom_manifest, tmp_path / "m.csv")
    config = TrainConfig(model="seed_cnn", image_size=32, epochs=2, batch_size=8, lr=1e-3, augment=False)
    out = tmp_path / "study"
    table = transfer_matrix(manifest, out, domain_col="organ", train_config=config, n_boot=20)
    assert len(table) == 4 and set(table["source"]) == {"histo", "mri"}
    for name in ("results.csv", "results.md", "accuracy_matrix.csv", "accuracy_matrix.png", "roc_auc_matrix.png"):
        assert (out / name).exists(), name
    matrix = pd.read_csv(out / "accuracy_matrix.csv", index_col=0)
    assert matrix.shape == (2, 2) and matrix.notna().all().all()
    assert "| histo |" in (out / "results.md").read_text()
    stamp = (out / "runs" / "histo" / "bundle" / "model.safetensors").stat().st_mtime_ns

    again = transfer_matrix(manifest, out, domain_col="organ", train_config=config, n_boot=20)
    assert (out / "runs" / "histo" / "bundle" / "model.safetensors").stat().st_mtime_ns == stamp  # resumed: not retrained
    pd.testing.assert_frame_equal(table, again)


def test_transfer_matrix_errors(phantom_manifest, tmp_path):
    manifest = save_manifest(phantom_manifest, tmp_path / "m.csv")
    with pytest.raises(ValueError, match="not in the manifest"):
        transfer_matrix(manifest, tmp_path / "x", domain_col="nope")
    with pytest.raises(ValueError, match="label map"):
        transfer_matrix(manifest, tmp_path / "y", domain_col="organ", label_map={"a": ["histo_normal"], "b": ["mri_tumor"]})


def test_parallel_jobs_give_the_same_matrix(phantom_manifest, tmp_path):
    manifest = save_manifest(phantom_manifest, tmp_path / "m.csv")
    config = TrainConfig(model="seed_cnn", image_size=32, epochs=1, batch_size=8, augment=False)
    serial = transfer_matrix(manifest, tmp_path / "a", domain_col="organ", train_config=config, n_boot=10)
    parallel = transfer_matrix(manifest, tmp_path / "b", domain_col="organ", train_config=config, n_boot=10, jobs=2)
    pd.testing.assert_frame_equal(serial[["source", "target", "accuracy"]], parallel[["source", "target", "accuracy"]])
