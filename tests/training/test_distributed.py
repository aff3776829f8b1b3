"""Distributed training on CPU: two gloo ranks on 127.0.0.1 launched by `oncolens train --nproc 2`."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oncolens.distributed import Distributed
from tests.helpers import kill_tree

pytestmark = pytest.mark.slow


def _oncolens(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oncolens", *args], capture_output=True, text=True, timeout=600,
                          **kwargs)


@pytest.fixture(scope="module")
def ddp_data(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    from oncolens.data import generate_phantoms, save_manifest, scan, split

    tmp = tmp_path_factory.mktemp("ddp")
    frame = split(scan(generate_phantoms(tmp / "ph", n=80, size=48, seed=4, per_patient=2)).manifest,
                  test=0.2, val=0.2, seed=0)
    return save_manifest(frame, tmp / "s.csv"), frame


def test_a_single_process_is_rank_0_of_1_and_collectives_are_no_ops():
    single = Distributed()
    assert (single.enabled, single.is_main, single.shard(5)) == (False, True, [0, 1, 2, 3, 4])
    assert single.all_sum([1.5, 2]) == [1.5, 2] and single.broadcast("x") == "x"
    assert Distributed(rank=1, world_size=3).shard(8) == [1, 4, 7]


def test_two_gloo_ranks_train_like_one_process(ddp_data, tmp_path):
    """The probe is fitted on features both ranks computed (each its shard, once); the fine-tuning stage
    (batch norm frozen, no dropout) takes full-batch steps whose gradient DDP averages over the two halves:
    the same steps as one process, so the two bundles agree to float rounding (tolerance 2e-3 on every
    probability, from batch-size-dependent convolution kernels and the order of sums)."""
    csv, frame = ddp_data
    n_train = int((frame["split"] == "train").sum())
    assert n_train % 2 == 0  # equal halves: the mean of the two ranks' mean gradients is the full-batch mean
    common = ["train", str(csv), "--model", "tf_efficientnet_lite0", "--image-size", "48", "--head", "logreg",
              "--freeze", "frozen", "--finetune", "last-1", "--epochs", "2", "--patience", "5",
              "--batch-size", "256", "--lr", "0.001", "--no-augment", "--tta", "none", "--recipe", "off",
              "--runs-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    one = _oncolens(*common, "--name", "one")
    assert one.returncode == 0, one.stdout + one.stderr
    two = _oncolens(*common, "--name", "two", "--nproc", "2", "--cache-dir", str(tmp_path / "cache2"))
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("bundle:") == 1  # rank 0 alone reports and writes
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["one", "two"]
    history = pd.read_csv(tmp_path / "runs" / "two" / "history.csv")
    assert history["stage"].tolist() == ["probe", "finetune", "finetune"]
    from oncolens.models import load_bundle

    test = frame.loc[frame["split"] == "test", "path"].tolist()
    a = load_bundle(tmp_path / "runs" / "one" / "bundle").score(test)
    b = load_bundle(tmp_path / "runs" / "two" / "bundle").score(test)
    assert np.abs(a.probabilities - b.probabilities).max() < 2e-3
    assert (a.decided == b.decided).all()


def test_a_killed_distributed_run_resumes_to_the_end(ddp_data, tmp_path):
    csv, _ = ddp_data
    run = tmp_path / "runs" / "k"
    args = ["train", str(csv), "--model", "tf_efficientnet_lite0", "--image-size", "64", "--freeze", "full",
            "--head", "linear", "--epochs", "3", "--batch-size", "8", "--no-augment", "--recipe", "off",
            "--tta", "none", "--runs-dir", str(tmp_path / "runs"), "--name", "k", "--nproc", "2"]
    process = subprocess.Popen([sys.executable, "-m", "oncolens", *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed"
        kill_tree(process.pid)  # the launcher and both ranks, mid-run, as a crashed machine would
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            kill_tree(process.pid)
    time.sleep(1)  # nothing may write any more
    done = len(pd.read_csv(run / "history.csv"))
    assert done < 3 and not (run / "bundle").exists()
    resumed = _oncolens("train", "--resume", str(run), "--nproc", "2")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming {run} after epoch {done}" in resumed.stdout.replace("\n", " ")
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3]
    assert (run / "bundle" / "model.safetensors").exists()
