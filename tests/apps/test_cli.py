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
