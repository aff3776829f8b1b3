"""On ../shared/data (when present) the scan reports the class counts its documentation lists."""

import re

import pytest

from oncolens.data import LayoutOptions, scan
from tests.helpers import SHARED_DATA

pytestmark = [pytest.mark.realdata, pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")]


def documented_counts() -> dict[str, dict[str, int]]:
    """Class counts from the table in shared/data/README.md (`name` ... | glioma 150, ... |)."""
    counts = {}
    for line in (SHARED_DATA / "README.md").read_text().splitlines():
        match = re.match(r"\|\s*`([^`/]+)[^`]*`\s*\|[^|]*\|\s*([^|]+)\|", line)
        if match:
            counts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", match.group(2))}
    return counts


DATASETS = sorted(documented_counts()) if SHARED_DATA.is_dir() else []
GROUP_REGEX = {"lymphoma_840": r"(sj-\d+-\d+)"}


@pytest.mark.parametrize("name", DATASETS)
def test_scan_matches_documented_counts(name):
    result = scan(SHARED_DATA / name, options=LayoutOptions(group_regex=GROUP_REGEX.get(name)))
    assert dict(result.summary.class_counts) == documented_counts()[name]
    assert result.skipped == []


def test_breakhis_patients_found():
    result = scan(SHARED_DATA / "breakhis_100x")
    assert result.summary.layout == "breakhis"
    assert result.manifest["group"].nunique() == 11
    assert set(result.manifest["magnification"]) == {"100X"}


def test_lymphoma_cases_found():
    result = scan(SHARED_DATA / "lymphoma_840", options=LayoutOptions(group_regex=GROUP_REGEX["lymphoma_840"]))
    assert result.manifest["group"].nunique() == 14
