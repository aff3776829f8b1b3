"""`evaluate` scores batch by batch into scores.jsonl: a killed evaluation resumes where it stopped, and
several ranks give the metrics one process gives."""

import json
import subprocess
import sys

import pytest

from oncolens.data import save_manifest, split
from oncolens.evaluation import evaluate
from tests.helpers import count_scored


@pytest.fixture(scope="module")
def manifest(phantom_manifest, tmp_path_factory):
    return save_manifest(split(phantom_manifest, test=0.5, val=0.2, seed=0),
                         tmp_path_factory.mktemp("stream") / "s.csv")


def test_a_resumed_evaluation_scores_only_the_rest_and_measures_the_same(tiny_bundle, manifest, tmp_path,
                                                                         monkeypatch):
    full = evaluate(tiny_bundle, manifest, out_dir=tmp_path / "full", n_boot=20)
    lines = (tmp_path / "full" / "scores.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == full.report.n
    out = tmp_path / "killed"
    out.mkdir()
    (out / "scores.jsonl.partial").write_text("".join(lines[:7]) + lines[7][:20])  # killed mid-row
    scored = count_scored(monkeypatch)
    resumed = evaluate(tiny_bundle, manifest, out_dir=out, n_boot=20, resume=True)
    assert scored == [len(lines) - 7]
    assert resumed.report.to_dict() == full.report.to_dict()
    written = [json.loads((folder / "metrics.json").read_text()) for folder in (tmp_path / "full", out)]
    assert written[0]["headline"] == written[1]["headline"] and written[0]["log_loss"] == written[1]["log_loss"]


@pytest.mark.slow
def test_two_ranks_evaluate_like_one_process(tiny_bundle, manifest, tmp_path):
    base = [sys.executable, "-m", "oncolens", "evaluate", str(tiny_bundle), "--data", str(manifest), "--n-boot", "20"]
    one = subprocess.run(base + ["--out", str(tmp_path / "one")], capture_output=True, text=True, timeout=600)
    two = subprocess.run(base + ["--out", str(tmp_path / "two"), "--nproc", "2"], capture_output=True, text=True,
                         timeout=600)
    assert one.returncode == 0 and two.returncode == 0, two.stdout + two.stderr
    a, b = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert a["n"] == b["n"]
    assert a["log_loss"] == pytest.approx(b["log_loss"], abs=1e-6)
    assert json.dumps(a["headline"], sort_keys=True) == json.dumps(b["headline"], sort_keys=True)
    assert (tmp_path / "two" / "scores.jsonl").read_text().count("\n") == a["n"]
    assert two.stdout.count("report:") == 1
