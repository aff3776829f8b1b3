import json
from html.parser import HTMLParser

import pytest

from oncolens.data import save_manifest, split
from oncolens.evaluation import evaluate
from oncolens.evaluation.report import REPORT_SECTIONS
from oncolens.training import TrainConfig, train


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs.get("src", ""))


@pytest.fixture(scope="module")
def trained(phantom_manifest, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    csv = save_manifest(split(phantom_manifest, test=0.25, val=0.2, seed=0), tmp / "splits.csv")
    result = train(TrainConfig(data=str(csv), model="seed_cnn", image_size=32, epochs=2, batch_size=8, lr=1e-3,
                               runs_dir=str(tmp / "runs"), name="r", augment=False))
    return result, csv, tmp


def test_evaluate_writes_metrics_plots_and_report(trained):
    result, csv, tmp = trained
    ev = evaluate(result.bundle_path, csv, split="test", n_boot=100, top_k=4)
    metrics = json.loads(ev.metrics_json.read_text())
    assert metrics["bootstrap"]["unit"] == "patient"  # phantoms carry patient ids
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro"):
        assert key in metrics["headline"]
    assert metrics["dataset"]["images"] == len(ev.predictions)
    for name in ("confusion.png", "roc.png", "reliability.png", "training_curves.png", "errors.png",
                 "predictions.csv", "group_organ.png"):
        assert (ev.out_dir / name).exists(), name
    parser = _Collector()
    parser.feed(ev.report_html.read_text())
    assert parser.sections == list(REPORT_SECTIONS)
    assert len(parser.images) >= 6 and all(src.startswith("data:image/png;base64,") for src in parser.images)
    assert "organ" in metrics["groups"]


def test_cross_dataset_evaluation_with_label_map(trained, tmp_path):
    result, csv, _ = trained
    import pandas as pd

    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    other = frame.assign(label=frame["label"].map({"histo_normal": "benign", "histo_tumor": "malignant",
                                                   "mri_normal": "notumor", "mri_tumor": "cyst"}))
    other = other.drop(columns="split")
    other_csv = save_manifest(other, tmp_path / "other.csv")
    ev = evaluate(result.bundle_path, other_csv, split="test", label_map="normal-vs-tumor", n_boot=50,
                  out_dir=tmp_path / "x")
    assert ev.report.classes == ["normal", "tumor"]
    assert any("no split column" in n for n in ev.notes)
    # "cyst" maps to normal in the built-in map, so nothing is unmapped; a custom map leaves it out
    ev2 = evaluate(result.bundle_path, other_csv, split=None, n_boot=50, out_dir=tmp_path / "y",
                   label_map={"normal": ["benign", "notumor", "*_normal"], "tumor": ["malignant", "*_tumor"]})
    assert any("cyst" in n for n in ev2.notes)
    with pytest.raises(ValueError, match="label map"):
        evaluate(result.bundle_path, other_csv, split=None, n_boot=0, out_dir=tmp_path / "z")
