"""`oncolens predict` at scale: rows written as they are scored, a killed run resumed without duplicates,
memory flat in the number of files, and several ranks merged in input order."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from oncolens.data.layouts import iter_image_files
from tests.helpers import kill_tree

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """3,000 tiny PNGs in two folders."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(3000):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"img{i:05d}.png")
    return root


def _predict(*args: str) -> list[str]:
    return [sys.executable, "-m", "oncolens", "predict", *args, "--show", "0"]


#: runs a command and prints the largest peak RSS of it and its workers (KiB)
_MEASURE = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def _peak_rss_mb(command: list[str]) -> float:
    """The command's own peak resident memory. Measured through a small Python process in between: a child
    forked straight from this (large) test process would report at least this process's size, because
    ``ru_maxrss`` keeps the peak of the process that forked it across ``exec``."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1]) / 1024


def test_a_killed_prediction_resumes_complete_ordered_and_without_duplicates(tiny_bundle, many_images, tmp_path):
    out = tmp_path / "p.csv"
    partial = out.with_name("p.csv.partial")
    args = _predict(str(tiny_bundle), str(many_images), "--out", str(out), "--batch-size", "16", "--workers", "0")
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None:
            if partial.exists() and partial.read_text().count("\n") > 300:
                break
            time.sleep(0.02)
        assert process.poll() is None, "finished before it could be killed"
        kill_tree(process.pid)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            kill_tree(process.pid)
    written = partial.read_text().count("\n") - 1
    assert 300 <= written < 3000 and not out.exists()
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "already written" in resumed.stdout
    rows = pd.read_csv(out)
    expected = [str(p) for p in iter_image_files(many_images)]
    assert rows["image"].tolist() == expected  # complete, in input order, each image once
    assert not partial.exists()
    again = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert "nothing to resume" in again.stdout


def test_memory_is_flat_in_the_number_of_files(tiny_bundle, many_images, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for path in list(iter_image_files(many_images))[:300]:
        (few / path.name).symlink_to(path)
    small = _peak_rss_mb(_predict(str(tiny_bundle), str(few), "--out", str(tmp_path / "a.csv"), "--workers", "0"))
    large = _peak_rss_mb(_predict(str(tiny_bundle), str(many_images), "--out", str(tmp_path / "b.csv"),
                                  "--workers", "0"))
    assert 150 < small < 4000, small  # the command itself (torch loaded), not this test process
    assert large < small * 1.15, (small, large)  # 10x the files, not 10x the memory


def test_two_ranks_merge_their_rows_in_input_order(tiny_bundle, many_images, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    base = [str(tiny_bundle), str(many_images / "a"), "--batch-size", "64"]
    subprocess.run(_predict(*base, "--out", str(one)), check=True, capture_output=True, timeout=600)
    result = subprocess.run(_predict(*base, "--out", str(two), "--nproc", "2"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    a, b = pd.read_json(one, lines=True), pd.read_json(two, lines=True)
    assert a["image"].tolist() == b["image"].tolist() == [str(p) for p in iter_image_files(many_images / "a")]
    assert np.allclose(a["confidence"], b["confidence"], atol=1e-5)
    assert not list(tmp_path.glob("two.rank*"))  # the ranks' parts are gone once merged
