"""RowLog: a table written row by row that survives a kill and resumes without duplicates."""

import pytest

from oncolens.errors import OutputExists
from oncolens.files import RowLog, read_rows


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_torn_last_line_is_dropped_and_the_rest_resumes(tmp_path, suffix):
    out = tmp_path / f"rows{suffix}"
    log = RowLog(out, ["image", "p"], key="image")
    log.write([{"image": "a", "p": 0.5}, {"image": "b", "p": 0.25}])
    log._handle.write('c,0.1' if suffix == ".csv" else '{"image": "c", "p"')  # killed mid-line
    log._handle.flush()
    assert not out.exists() and log.partial.exists()
    again = RowLog(out, ["image", "p"], key="image", resume=True)
    assert again.done == {"a", "b"}
    again.write([{"image": "c", "p": 0.125}])
    again.close()
    assert [r["image"] for r in read_rows(out)] == ["a", "b", "c"] and not again.partial.exists()
    assert float(list(read_rows(out))[2]["p"]) == 0.125


def test_without_resume_an_old_partial_file_is_started_over(tmp_path):
    out = tmp_path / "rows.csv"
    RowLog(out, ["image"], key="image").write([{"image": "old"}])
    log = RowLog(out, ["image"], key="image")
    log.close()
    assert list(read_rows(out)) == []


def test_resuming_with_other_columns_is_refused(tmp_path):
    out = tmp_path / "rows.csv"
    RowLog(out, ["image", "a"], key="image").write([{"image": "x", "a": 1}])
    with pytest.raises(OutputExists, match="other columns"):
        RowLog(out, ["image", "b"], key="image", resume=True)
