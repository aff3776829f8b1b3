import pandas as pd
import pytest

from oncolens.staging import TNMError, parse_tnm, tnm_stage, tnm_stage_column


@pytest.mark.parametrize("text, expected", [
    ("T2N0M0", ("2", "0", "0", "", "")),
    ("pT1a N1mi M0", ("1", "1", "0", "a", "p")),
    ("Tis N0 M0", ("is", "0", "0", "", "")),
    ("TX NX MX", ("X", "X", "X", "", "")),
    ("ypT3 pN2 cM1", ("3", "2", "1", "", "yp")),
    ("t4b, n3c, m1a", ("4", "3", "1", "b", "")),
])
def test_parse_valid(text, expected):
    tnm = parse_tnm(text)
    assert (tnm.t, tnm.n, tnm.m, tnm.t_sub, tnm.prefix) == expected


@pytest.mark.parametrize("text, message", [
    ("", "empty"), ("T5 N0 M0", "T goes up to T4"), ("T2 N4 M0", "N goes up to N3"), ("T2 N0 M2", "M0 or M1"),
    ("T2 N0", "missing M"), ("stage two", "not a TNM"), ("Tisa N0 M0", "sub-letter"), ("T0a N0 M0", "sub-letter"),
])
def test_parse_invalid(text, message):
    with pytest.raises(TNMError, match=message):
        parse_tnm(text)


@pytest.mark.parametrize("text, ajcc, generic", [
    ("Tis N0 M0", "0", "0"), ("T1 N0 M0", "I", "I-III"), ("T1c N0 M0", "I", "I-III"), ("T2 N0 M0", "II", "I-III"),
    ("T3 N0 M0", "II", "I-III"), ("T1 N1 M0", "II", "I-III"), ("T0 N1 M0", "II", "I-III"),
    ("T3 N1 M0", "III", "I-III"), ("T2 N2 M0", "III", "I-III"), ("T4 N0 M0", "III", "I-III"),
    ("T1 N3 M0", "III", "I-III"), ("T2 N1 M1", "IV", "IV"), ("TX NX M1", "IV", "IV"),
    ("TX N0 M0", None, None), ("T2 N0 MX", None, None), ("T0 N0 M0", None, None),
])
def test_stage_rules(text, ajcc, generic):
    assert tnm_stage(text, "ajcc") == ajcc
    assert tnm_stage(text, "generic") == generic


def test_unknown_rule():
    with pytest.raises(ValueError, match="rule"):
        tnm_stage("T1 N0 M0", "tnm9")


def test_stage_column_accepts_tnm_and_stages_and_reports_problems():
    stages, problems = tnm_stage_column(pd.Series(["T1 N0 M0", "Stage III", "IV", "T9 N0 M0", "TX NX MX"]))
    assert stages.tolist() == ["I", "III", "IV", "", ""]
    assert set(problems) == {"T9 N0 M0", "TX NX MX"}


def test_staging_classifier_end_to_end(phantom_manifest, tmp_path):
    from typer.testing import CliRunner

    from oncolens.apps.cli import app
    from oncolens.data import save_manifest

    frame = phantom_manifest.copy()
    frame["tnm"] = ["T2 N1 M0" if label.endswith("tumor") else "Tis N0 M0" for label in frame["label"]]
    manifest = save_manifest(frame, tmp_path / "m.csv")
    runner = CliRunner()
    result = runner.invoke(app, ["stage", str(manifest), "--out", str(tmp_path / "staged.csv")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", str(tmp_path / "staged.csv"), "--label-col", "stage", "--model", "seed_cnn",
                                 "--image-size", "32", "--epochs", "1", "--runs-dir", str(tmp_path / "runs"),
                                 "--name", "s"])
    assert result.exit_code == 0, result.output
    import json

    assert json.loads((tmp_path / "runs" / "s" / "classes.json").read_text()) == ["0", "II"]


def test_tnm_names_say_tnm_and_the_old_ones_warn():
    """A stage of the TNM module is a TNM stage group: its public names say so, so none reads like a training
    stage (``oncolens.training.stages.STAGES`` is the registry of those); the old names work for one release."""
    import oncolens.staging as staging

    assert not [name for name in staging.__all__ if "stage" in name.lower() and "tnm" not in name.lower()]
    for old, new in (("stage_group", "tnm_stage"), ("stage_column", "tnm_stage_column"), ("STAGES", "TNM_STAGES"),
                     ("RULES", "TNM_RULES")):
        with pytest.warns(DeprecationWarning, match=f"{old} is now {new}"):
            assert getattr(staging, old) is getattr(staging, new)
    with pytest.warns(DeprecationWarning):
        from oncolens.staging import stage_group
    assert stage_group("T1 N0 M0") == "I"
    with pytest.raises(AttributeError):
        staging.no_such_name
