import pandas as pd
import pytest
from typer.testing import CliRunner

from oncolens.apps.cli import app

runner = CliRunner()


def subcommands() -> list[str]:
    import typer.main

    return sorted(typer.main.get_command(app).commands)


def test_help_lists_subcommands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in ("scan", "split", "phantoms"):
        assert name in result.output


@pytest.mark.parametrize("name", subcommands())
def test_every_subcommand_has_help(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_phantoms_scan_split_round_trip(tmp_path):
    data = tmp_path / "ph"
    assert runner.invoke(app, ["phantoms", str(data), "--n", "24", "--size", "32"]).exit_code == 0
    manifest = tmp_path / "m.csv"
    result = runner.invoke(app, ["scan", str(data), "--out", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "histo_tumor" in result.output and "skipped: none" in result.output
    splits = tmp_path / "s.csv"
    report = tmp_path / "leak.csv"
    result = runner.invoke(app, ["split", str(manifest), "--out", str(splits), "--test", "0.25", "--seed", "1", "--report", str(report)])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(splits)
    assert set(frame["split"]) == {"train", "test"}
    assert (frame.groupby("group")["split"].nunique() == 1).all()
    assert report.exists()


def test_scan_prints_skipped_files_with_reasons(tmp_path):
    from tests.helpers import make_bad_corpus

    make_bad_corpus(tmp_path / "d")
    result = runner.invoke(app, ["scan", str(tmp_path / "d"), "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 0
    assert "zero.png: empty file" in result.output
    assert "not an image" in result.output


def test_errors_are_messages_not_tracebacks(tmp_path):
    result = runner.invoke(app, ["scan", str(tmp_path / "missing"), "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
    one = tmp_path / "one.csv"
    pd.DataFrame({"path": ["a.png", "b.png"], "label": ["x", "x"]}).to_csv(one, index=False)
    result = runner.invoke(app, ["split", str(one), "--out", str(tmp_path / "s.csv")])
    assert result.exit_code == 2 and "only one class" in result.output


def test_models_lists_registry():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    import json

    names = {row["name"] for row in json.loads(result.output)}
    assert {"seed_cnn", "tf_efficientnet_lite0", "alexnet"} <= names


def test_train_with_yaml_and_flags_then_predict(tmp_path, phantom_dir):
    manifest = tmp_path / "m.csv"
    assert runner.invoke(app, ["scan", str(phantom_dir), "--out", str(manifest)]).exit_code == 0
    config = tmp_path / "c.yaml"
    config.write_text("model: seed_cnn\nimage_size: 32\nepochs: 5\nbatch_size: 8\naugment: false\n")
    result = runner.invoke(app, ["train", str(manifest), "--config", str(config), "--epochs", "1",
                                 "--runs-dir", str(tmp_path / "runs"), "--name", "r"])
    assert result.exit_code == 0, result.output
    import yaml

    saved = yaml.safe_load((tmp_path / "runs" / "r" / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["model"] == "seed_cnn" and saved["image_size"] == 32
    assert saved["weights"] == "random" and saved["freeze"] == "full"  # 'auto' resolved and recorded
    bundle = tmp_path / "runs" / "r" / "bundle"
    images = sorted(p for p in phantom_dir.rglob("*.png") if not p.name.endswith(".mask.png"))[:3]
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    for out in (tmp_path / "p.csv", tmp_path / "p.json"):
        result = runner.invoke(app, ["predict", str(bundle), *map(str, images), str(bad), "--top-k", "2", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "skipped" in result.output and "not an image" in result.output
    frame = pd.read_csv(tmp_path / "p.csv")
    assert len(frame) == 3 and {"top1_label", "top2_probability"} <= set(frame.columns)
    import json

    data = json.loads((tmp_path / "p.json").read_text())
    assert len(data["predictions"]) == 3 and len(data["predictions"][0]["top"]) == 2 and str(bad) in data["skipped"]
    result = runner.invoke(app, ["train", "--resume", str(tmp_path / "runs" / "r")])
    assert result.exit_code == 0, result.output


def test_train_unavailable_weights_is_clear(tmp_path, phantom_dir, monkeypatch):
    from oncolens.models import pretrained as registry

    monkeypatch.setattr(registry, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(registry, "_hub_cache_file", lambda *a, **k: None)
    manifest = tmp_path / "m.csv"
    runner.invoke(app, ["scan", str(phantom_dir), "--out", str(manifest)])
    result = runner.invoke(app, ["train", str(manifest), "--model", "resnet50", "--weights", "imagenet",
                                 "--runs-dir", str(tmp_path / "runs"), "--name", "x"])
    assert result.exit_code == 2 and "cannot be reached" in result.output and "Traceback" not in result.output


def test_hierarchical_bundle_through_predict_explain_evaluate_export(hierarchical_bundle, hierarchy_study_dir,
                                                                     phantom_manifest, tmp_path):
    images = [str(p) for p in phantom_manifest["path"][:3]]
    result = runner.invoke(app, ["predict", str(hierarchical_bundle), *images, "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "p.csv")
    assert {"organ_label", "organ_confidence", "tumor_label", "label"} <= set(table.columns)
    assert (table["label"] == table["tumor_label"]).all()
    result = runner.invoke(app, ["explain", str(hierarchical_bundle), images[0], "--level", "0", "--out",
                                 str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    record = __import__("json").loads((tmp_path / "x" / "explanations.json").read_text())["explanations"][0]
    assert record["level"] == "organ" and record["node"] == "root" and record["target"] in ("histo", "mri")
    result = runner.invoke(app, ["evaluate", str(hierarchical_bundle), "--data",
                                 str(hierarchy_study_dir / "data" / "all.csv"), "--n-boot", "5", "--out",
                                 str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert "level by level" in result.output
    result = runner.invoke(app, ["export", str(hierarchical_bundle), "--onnx", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    # one-epoch seed CNNs have their own backbones: one graph per classifier
    assert sorted(p.name for p in (tmp_path / "onnx").glob("*.onnx")) == ["histo.onnx", "mri.onnx", "root.onnx"]
    assert "max |probability difference|" in result.output
    result = runner.invoke(app, ["evaluate", str(hierarchical_bundle), "--data",
                                 str(hierarchy_study_dir / "data" / "all.csv"), "--n-boot", "5", "--out",
                                 str(tmp_path / "ev2"), "--explain", "gradcam", "--per-class", "1"])
    assert result.exit_code == 0, result.output
    panels = sorted(p.name for p in (tmp_path / "ev2" / "panels").glob("*.png"))
    assert panels and set(panels) <= {f"panel_{c}.png" for c in ("histo_normal", "histo_tumor", "mri_normal", "mri_tumor")}
    report = (tmp_path / "ev2" / "report.html").read_text()
    assert "<figcaption>gradcam: " in report and "no explanation was computed" not in report
    result = runner.invoke(app, ["explain-eval", str(hierarchical_bundle), "--data",
                                 str(hierarchy_study_dir / "data" / "all.csv"), "--method", "gradcam,saliency",
                                 "--n-images", "4"])
    assert result.exit_code == 0, result.output
    assert "gradcam" in result.output and "random" in result.output


def test_user_errors_are_one_line_and_exit_2_but_bugs_keep_their_traceback(tmp_path, tiny_bundle, monkeypatch):
    result = runner.invoke(app, ["evaluate", str(tmp_path / "nope"), "--data", str(tmp_path / "m.csv")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [f"error: bundle not found: {tmp_path / 'nope'}"]
    from oncolens import predictor

    monkeypatch.setattr(predictor.Predictor, "iter_predict_files", lambda *a, **k: 1 / 0)
    result = runner.invoke(app, ["predict", str(tiny_bundle), str(tmp_path)])
    assert isinstance(result.exception, ZeroDivisionError)  # not swallowed into a friendly message


def test_piped_tables_keep_whole_names():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    assert "mobilenetv3_large_100" in result.output and "tf_efficientnet_lite0" in result.output
    assert "134,268,738" in result.output  # VGG-16's parameters, counted without building it


def test_train_flags_are_the_configuration_fields():
    import dataclasses

    from oncolens.training import TrainConfig

    help_text = runner.invoke(app, ["train", "--help"], terminal_width=400).output
    for f in dataclasses.fields(TrainConfig):
        if f.name != "data":
            assert f"--{f.name.replace('_', '-')}" in help_text, f.name


def test_option_names_mean_one_thing_and_old_spellings_warn(tiny_bundle, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from oncolens.apps.cli import app

    image = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (120, 60, 90)).save(image)
    runner = CliRunner()
    new = runner.invoke(app, ["explain", str(tiny_bundle), str(image), "--opacity", "0.3", "--out", str(tmp_path / "a")])
    assert new.exit_code == 0 and "deprecated" not in new.output and "is now" not in new.output, new.output
    old = runner.invoke(app, ["explain", str(tiny_bundle), str(image), "--alpha", "0.3", "--out", str(tmp_path / "b")])
    assert old.exit_code == 0 and "--alpha (heatmap opacity) is now --opacity" in old.output, old.output
    assert (tmp_path / "a" / "x.gradcam.heatmap.png").read_bytes() == (tmp_path / "b" / "x.gradcam.heatmap.png").read_bytes()
    for command in (["cv"], ["study", "transfer"], ["study", "compare"], ["study", "hierarchy"]):
        shown = runner.invoke(app, [*command, "--help"]).output
        assert "--jobs" in shown and "--workers" not in shown, command  # --workers: images read in parallel only


def test_study_options_are_checked_like_train_options(tmp_path):
    from typer.testing import CliRunner

    from oncolens.apps.cli import app

    (tmp_path / "m.csv").write_text("path,label\n")
    result = CliRunner().invoke(app, ["study", "compare", str(tmp_path / "m.csv"), "--epochs", "0",
                                      "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "epochs" in result.output and "at least 1" in result.output, result.output
