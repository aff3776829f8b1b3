"""Hostile inputs, round 4 (data): a missing folder is named as missing, copies are one piece of evidence and one
group, a long grouping says how far it has come, and an evaluation is recorded on the model card whoever runs it."""

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from oncolens.apps.cli import app
from tests.helpers import fails_cleanly, noise_image, save

runner = CliRunner()


_fails_cleanly = fails_cleanly


def _training_images(bundle: Path) -> list[str]:
    splits = pd.read_csv(Path(bundle).parent / "splits.csv", keep_default_na=False)
    return splits.loc[splits["split"] == "train", "path"].tolist()


# (d) a folder that does not exist


def test_check_on_a_folder_that_does_not_exist_says_so(histology_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    output = _fails_cleanly(["check", histology_bundle, "no_such_folder"], "no_such_folder", "does not exist")
    assert "at least 2 images" not in output


# (e) copies are not independent evidence


def test_copies_of_one_training_image_are_not_evidence_of_a_shift(histology_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = _training_images(histology_bundle)[0]
    Path("copies").mkdir()
    for i in range(20):
        shutil.copyfile(source, f"copies/{i:02d}.png")
    result = runner.invoke(app, ["check", str(histology_bundle), "copies", "--out", "check.json"])
    assert result.exit_code == 0, result.output  # 3 would be "shifted"
    assert "too few distinct images to tell" in result.output and "19 copies collapsed" in result.output, result.output
    assert "shifted" not in result.output


def _re_saved(images: list[str], folder: str, times: int = 4) -> None:
    """Each image saved ``times`` times at other PNG compression levels: the same pixels under other bytes."""
    Path(folder).mkdir()
    for i, path in enumerate(images):
        for level in range(times):
            Image.open(path).save(f"{folder}/{i}_{level}.png", compress_level=level + 1)
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).iterdir()}) > len(images)


def test_re_saved_copies_are_collapsed_by_their_features(histology_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _re_saved(_training_images(histology_bundle)[:3], "new")
    result = runner.invoke(app, ["check", str(histology_bundle), "new"])
    assert result.exit_code in (0, 3), result.output
    assert result.output.startswith("3 new images (9 copies collapsed)"), result.output


def test_images_identical_to_training_images_are_left_out_of_the_evidence(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a bundle trained without augmentation keeps its training images' features
    _re_saved(_training_images(tiny_bundle)[:3], "new")
    result = runner.invoke(app, ["check", str(tiny_bundle), "new"])
    assert result.exit_code == 0, result.output
    assert "9 copies collapsed; 3 identical to training images left out" in result.output, result.output
    assert "too few distinct images to tell" in result.output


def test_distinct_new_images_are_still_judged_with_their_copies_collapsed(histology_bundle, tmp_path):
    from oncolens.data import generate_phantoms, scan
    from oncolens.evaluation.shift import check_new_data

    root = generate_phantoms(tmp_path / "ph", n=24, size=48, seed=5, per_patient=2, families=("histo",))
    paths = scan(root / "histo").manifest["path"].tolist()[:12]
    copies = [str(shutil.copyfile(paths[0], tmp_path / f"copy{i}.png")) for i in range(20)]
    report = check_new_data(histology_bundle, paths + copies)
    assert report.images == 12 and report.copies == 20 and report.training_copies == 0, report.lines()
    assert not report.verdict.startswith("too few"), report.lines()


# (f) identical images are one group, found from the files themselves


@pytest.fixture
def stale_manifest(tmp_path, monkeypatch):
    """Ten distinct images per class and six byte-identical copies of one image, in a manifest whose sha256
    column is stale (every row a different value, as after the files were replaced)."""
    from oncolens.data import save_manifest, scan

    monkeypatch.chdir(tmp_path)
    for label, offset in (("a", 0), ("b", 100)):
        for i in range(10):
            save(noise_image(48, seed=offset + i), Path("images") / label / f"{i}.png")
    for i in range(6):
        shutil.copyfile("images/a/0.png", f"images/a/copy{i}.png")
    frame = scan(Path("images")).manifest
    frame["sha256"] = [f"{i:064x}" for i in range(len(frame))]
    frame["phash"] = ""
    save_manifest(frame, Path("m.csv"))
    return [str(p) for p in frame["path"] if Path(p).name == "0.png" and Path(p).parent.name == "a"
            or Path(p).name.startswith("copy")]


@pytest.mark.parametrize("group_by,column", [("embedding", "lookalike"), ("phash", "dup_cluster")])
def test_split_puts_identical_images_in_one_group_whatever_the_manifest_says(stale_manifest, group_by, column):
    result = runner.invoke(app, ["split", "m.csv", "--out", "s.csv", "--group-by", group_by,
                                 "--cache-dir", "cache"])
    assert result.exit_code == 0, result.output
    out = pd.read_csv("s.csv", keep_default_na=False)
    copies = out[out["path"].isin(stale_manifest)]
    assert len(copies) == 7
    assert copies[column].nunique() == 1 and copies["split"].nunique() == 1, copies[[column, "split"]]
    assert copies["sha256"].nunique() == 1  # the files' own hash, not the stale column
    assert copies["sha256"].iloc[0] == hashlib.sha256(Path(stale_manifest[0]).read_bytes()).hexdigest()


def test_identical_embeddings_are_one_look_alike_group_even_without_a_threshold():
    import numpy as np

    from oncolens.data.lookalike import lookalike_groups

    rng = np.random.default_rng(0)
    same = np.repeat(rng.normal(size=(1, 64)), 12, axis=0) + rng.normal(scale=1e-6, size=(12, 64))
    groups = lookalike_groups(np.concatenate([same, rng.normal(size=(40, 64))]))
    assert len(set(groups.labels[:12])) == 1
    assert len(set(groups.labels[12:])) == 40


# (l) progress while embedding


def test_split_by_embedding_says_how_far_it_has_come(tmp_path, monkeypatch):
    from oncolens.data import save_manifest, scan

    monkeypatch.chdir(tmp_path)
    for i in range(24):
        save(noise_image(32, seed=i), Path("images") / "ab"[i % 2] / f"{i}.png")
    save_manifest(scan(Path("images")).manifest, Path("m.csv"))
    result = runner.invoke(app, ["split", "m.csv", "--out", "s.csv", "--cache-dir", "cache"])
    assert result.exit_code == 0, result.output
    assert "hashing files: 24 to do" in result.output, result.output
    assert "embedding images: 24 to do" in result.output and "embedding images: 24 of 24 done" in result.output
    again = runner.invoke(app, ["split", "m.csv", "--out", "s2.csv", "--cache-dir", "cache"])
    assert again.exit_code == 0 and "embedding images" not in again.output  # all in the cache: nothing to do


def test_grouping_reports_progress_through_a_callback_and_prints_nothing(tmp_path, capsys):
    from oncolens.data import scan
    from oncolens.training.lookalikes import GroupingConfig, add_lookalike_groups

    for i in range(40):
        save(noise_image(32, seed=i), tmp_path / "images" / "ab"[i % 2] / f"{i}.png")
    frame = scan(tmp_path / "images").manifest
    calls = []
    add_lookalike_groups(frame, GroupingConfig(cache_dir=tmp_path / "cache", batch_size=8),
                         progress=lambda what, done, total: calls.append((what, done, total)))
    embedding = [c for c in calls if c[0] == "embedding images"]
    assert embedding[0] == ("embedding images", 0, 40) and embedding[-1] == ("embedding images", 40, 40)
    assert len(embedding) == 6  # the start and every batch of 8
    assert ("hashing files", 40, 40) in calls
    assert capsys.readouterr().out == ""


# (k) the library's evaluate records on the card, as the CLI's does


def test_evaluate_from_the_library_records_the_evaluation_on_the_card(tiny_bundle, tmp_path, monkeypatch):
    from oncolens.evaluation import evaluate
    from oncolens.models.card import model_card

    monkeypatch.chdir(tmp_path)
    bundle = shutil.copytree(tiny_bundle, "bundle")
    splits = pd.read_csv(Path(tiny_bundle).parent / "splits.csv", keep_default_na=False)
    data = Path("splits.csv")
    splits.to_csv(data, index=False)
    before = len(model_card(bundle)["evaluations"])  # the session's bundle may have been evaluated by other tests
    result = evaluate(bundle, data, split="test", out_dir="eval", n_boot=20)
    card = model_card(bundle)
    assert len(card["evaluations"]) == before + 1, card["evaluations"]
    assert card["evaluations"][-1]["accuracy"] == pytest.approx(result.report.value("accuracy"))
    assert "no evaluation recorded" not in (Path(bundle) / "MODEL_CARD.md").read_text()
    evaluate(bundle, data, split="val", out_dir="eval_val", n_boot=20, record=False)
    assert len(model_card(bundle)["evaluations"]) == before + 1  # record=False leaves the card alone
