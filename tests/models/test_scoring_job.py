"""ScoringJob, the one runner of resumable, sharded jobs: rows written and fsynced batch by batch (a .partial
file while it runs), resume after a kill, the merge of the ranks' parts in input order, a finished job as a
no-op, rows that no longer hold done again, and a job whose sink writes one file per input (`features`)."""

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oncolens.distributed import Distributed
from oncolens.errors import DataError
from oncolens.files import read_rows
from oncolens.models.scoring_job import ScoringJob

KEYS = [f"img{i}.png" for i in range(10)]
FIELDS = ["image", "score"]


class Ranks(Distributed):
    """Ranks run one after the other in this process: rank 0 last, so nothing is left to wait for."""

    def barrier(self) -> None:
        pass


def batches_of(asked: list, size: int = 3, killed_at: int | None = None):
    """``rows_of`` for KEYS: ``size`` inputs per batch, recording what it was asked; a kill (KeyboardInterrupt)
    when batch ``killed_at`` is asked for."""

    def rows_of(todo: list[int]):
        asked.append(list(todo))
        for n, start in enumerate(range(0, len(todo), size)):
            if n == killed_at:
                raise KeyboardInterrupt
            yield [{"image": KEYS[i], "score": i * 10} for i in todo[start:start + size]]

    return rows_of


def images(path: Path) -> list[str]:
    return [row["image"] for row in read_rows(path)]


def test_rows_are_written_and_fsynced_batch_by_batch_into_a_partial_file(tmp_path, monkeypatch):
    out = tmp_path / "preds.csv"
    partial = tmp_path / "preds.csv.partial"
    synced: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    seen = []

    def rows_of(todo):
        for start in range(0, len(todo), 4):  # before each batch: what is on disk so far
            seen.append((images(partial), len(synced), out.exists()))
            yield [{"image": KEYS[i], "score": i} for i in todo[start:start + 4]]

    job = ScoringJob(out, key="image", fields=FIELDS)
    job.score(KEYS, rows_of)
    assert [s[0] for s in seen] == [[], KEYS[:4], KEYS[:8]]  # every batch on disk before the next is asked for
    assert seen[0][1] < seen[1][1] < seen[2][1]  # and fsynced
    assert not any(s[2] for s in seen)  # the file has its name only when complete
    assert not partial.exists() and images(out) == KEYS and job.written == 10 and job.complete


@pytest.mark.parametrize("name", ["preds.csv", "scores.jsonl"])
def test_a_killed_job_keeps_its_rows_and_resuming_scores_only_the_rest(tmp_path, name):
    out = tmp_path / name
    partial = tmp_path / f"{name}.partial"
    with pytest.raises(KeyboardInterrupt):
        ScoringJob(out, key="image", fields=FIELDS).score(KEYS, batches_of([], killed_at=2))
    assert not out.exists() and images(partial) == KEYS[:6]  # two batches of 3 were written
    with open(partial, "a") as handle:  # a line torn by the kill is dropped, its input scored again
        handle.write('{"image": "img6.png", "sc' if name.endswith(".jsonl") else "img6.png,6")
    asked: list = []
    job = ScoringJob(out, key="image", fields=FIELDS, resume=True)
    job.score(KEYS, batches_of(asked))
    assert asked == [list(range(6, 10))] and job.done_before == 6 and job.written == 4
    rows = list(read_rows(out))
    assert [r["image"] for r in rows] == KEYS  # each input once, in input order
    assert [int(r["score"]) for r in rows] == [i * 10 for i in range(10)] and not partial.exists()
    asked.clear()
    ScoringJob(out, key="image", fields=FIELDS).score(KEYS, batches_of(asked))  # without resume: all again
    assert asked == [list(range(10))] and images(out) == KEYS


def test_resuming_a_finished_job_scores_nothing_and_keeps_its_file(tmp_path):
    out = tmp_path / "preds.csv"
    ScoringJob(out, key="image", fields=FIELDS).score(KEYS, batches_of([]))
    before = out.read_bytes()
    asked: list = []
    job = ScoringJob(out, key="image", fields=FIELDS, resume=True)
    assert job.complete
    job.score(KEYS, batches_of(asked))
    assert asked == [[]] and job.written == 0 and job.done_before == 10
    assert out.read_bytes() == before and not (tmp_path / "preds.csv.partial").exists()


def test_resuming_does_again_the_inputs_whose_rows_no_longer_hold(tmp_path):
    out, files = tmp_path / "made.csv", tmp_path / "files"
    files.mkdir()
    asked: list = []

    def rows_of(todo):
        asked.append(list(todo))
        for i in todo:
            (files / KEYS[i]).write_text(str(i))
            yield [{"image": KEYS[i], "file": str(files / KEYS[i])}]

    ScoringJob(out, key="image", fields=["image", "file"]).score(KEYS, rows_of)
    (files / KEYS[3]).unlink()
    asked.clear()
    ScoringJob(out, key="image", fields=["image", "file"], resume=True,
               keep=lambda row: Path(row["file"]).is_file()).score(KEYS, rows_of)
    assert asked == [[3]] and (files / KEYS[3]).is_file()
    assert sorted(images(out)) == sorted(KEYS) and len(images(out)) == 10  # once each


@pytest.mark.parametrize("name,fields", [("scores.jsonl", []), ("preds.csv", FIELDS)])
def test_the_ranks_parts_are_merged_into_one_file_in_input_order(tmp_path, name, fields):
    out = tmp_path / name
    for rank in (2, 1, 0):  # rank 0 last: it merges once every part is complete
        asked: list = []
        dist = Ranks(rank=rank, world_size=3)
        ScoringJob(out, key="image", fields=fields, dist=dist).score(KEYS, batches_of(asked, size=2))
        assert asked == [list(range(rank, 10, 3))]  # this rank's share only
        assert dist.part(out).exists() == (rank > 0) and out.exists() == (rank == 0)
    rows = list(read_rows(out))
    assert [r["image"] for r in rows] == KEYS and [int(r["score"]) for r in rows] == [i * 10 for i in range(10)]
    assert [p.name for p in tmp_path.iterdir()] == [name]  # the parts are removed


# --- a job whose sink writes one file per input: the bags of `oncolens features` --------------------
@pytest.fixture()
def stub_extraction(monkeypatch):
    """Bags made without a model; ``made`` lists the inputs extracted, ``kill`` names one that kills the run."""
    import oncolens.models.bags as bags

    state = {"made": [], "kill": None}

    def extract(extractor, source, config, **kwargs):
        if source == state["kill"]:
            raise KeyboardInterrupt
        if "broken" in source:
            raise DataError(f"{source}: cannot read it")
        state["made"].append(source)
        return {"features": np.full((2, 4), len(state["made"]), np.float32), "coords": np.zeros((2, 4), np.float32),
                "tissue": np.ones(2, np.float32)}

    monkeypatch.setattr(bags, "extract_bag", extract)
    return state


def _bags(frame, out, dist=None):
    from oncolens.models.bags import BagConfig, Extractor, make_bags

    return make_bags(frame, out, Extractor(bundle=None, spec={"model": "stub"}), BagConfig(size=32), dist=dist)


def test_features_is_a_job_whose_sink_writes_one_bag_file_per_input(tmp_path, stub_extraction):
    from oncolens.models.bags import read_bag

    frame = pd.DataFrame({"path": [f"slides/s{i}.tif" for i in range(5)] + ["slides/broken.tif"],
                          "label": ["normal", "tumour"] * 3, "group": [f"p{i}" for i in range(6)]})
    out = tmp_path / "bags"
    stub_extraction["kill"] = "slides/s3.tif"
    with pytest.raises(KeyboardInterrupt):
        _bags(frame, out)
    partial = list(read_rows(out / "bags.csv.partial"))  # the bags made before the kill, each with its row
    assert [r["bag_source"] for r in partial] == ["slides/s0.tif", "slides/s1.tif", "slides/s2.tif"]
    assert all(Path(r["path"]).is_file() for r in partial) and len(list(out.glob("*.safetensors"))) == 3

    stub_extraction.update(kill=None, made=[])
    manifest, failed = _bags(frame, out)  # resumed: only the rest is made
    assert stub_extraction["made"] == ["slides/s3.tif", "slides/s4.tif"]
    assert list(failed) == ["slides/broken.tif"] and "cannot read" in failed["slides/broken.tif"]
    assert list(manifest.columns) == ["path", "bag_source", "label", "group"]  # the manifest's columns, as before
    assert manifest["bag_source"].tolist() == frame["path"].tolist()[:5]
    assert manifest["label"].tolist() == frame["label"].tolist()[:5]
    pd.testing.assert_frame_equal(pd.read_csv(out / "bags.csv", dtype=str), manifest)
    arrays, metadata = read_bag(manifest["path"].iloc[3])
    assert arrays["features"].shape == (2, 4) and metadata["source"] == "slides/s3.tif"

    # a bag file removed and an input relabelled: only the missing bag is made again, the label follows the input
    Path(manifest["path"].iloc[1]).unlink()
    frame.loc[2, "label"] = "normal"
    stub_extraction["made"] = []
    again, _ = _bags(frame, out)
    assert stub_extraction["made"] == ["slides/s1.tif"]
    assert again["bag_source"].tolist() == frame["path"].tolist()[:5]  # input order
    assert again["label"].tolist() == frame["label"].tolist()[:5] and Path(again["path"].iloc[1]).is_file()


def test_the_ranks_bags_are_merged_into_one_manifest(tmp_path, stub_extraction):
    frame = pd.DataFrame({"path": [f"s{i}.tif" for i in range(5)], "label": ["a", "b", "a", "b", "a"]})
    shares = {}
    for rank in (1, 0):
        stub_extraction["made"] = []
        manifest, _ = _bags(frame, tmp_path / "bags", dist=Ranks(rank=rank, world_size=2))
        shares[rank] = (stub_extraction["made"], len(manifest))
    assert shares == {1: (["s1.tif", "s3.tif"], 0), 0: (["s0.tif", "s2.tif", "s4.tif"], 5)}
    assert manifest["bag_source"].tolist() == frame["path"].tolist()
    assert sorted(p.name for p in (tmp_path / "bags").glob("*.csv*")) == ["bags.csv"]
