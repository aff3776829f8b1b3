"""A user's CSV with a path column, a label column and optionally a group (patient) column."""

from __future__ import annotations

import csv as _csv
from collections.abc import Iterator
from pathlib import Path

from ...errors import DataError
from .base import Candidate, Layout, LayoutOptions, register_layout


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return next(_csv.reader(handle), [])


@register_layout("csv")
class CsvLayout(Layout):
    description = "a CSV file with path and label columns (optional group column); other columns are kept"

    def detect(self, root: Path) -> float:
        return 1.0 if root.is_file() and root.suffix.lower() in (".csv", ".tsv") else 0.0

    def _check(self, root: Path, options: LayoutOptions) -> list[str]:
        if not root.is_file():
            raise DataError(f"the csv layout needs a CSV file, got {root}")
        header = _header(root)
        missing = [c for c in (options.path_col, options.label_col, options.group_col) if c and c not in header]
        if missing:
            raise DataError(f"{root}: column(s) {missing} not found; the CSV has {header}")
        return header

    def columns(self, root: Path, options: LayoutOptions) -> list[str]:
        header = self._check(root, options)
        extra = [c for c in header if c not in (options.path_col, options.label_col, options.group_col)]
        cols = ["label", *(["group"] if options.group_col else []), *extra]
        return list(dict.fromkeys(cols))

    def candidates(self, root: Path, options: LayoutOptions) -> Iterator[Candidate]:
        self._check(root, options)
        base = root.parent
        delimiter = "\t" if root.suffix.lower() == ".tsv" else ","
        with open(root, newline="", encoding="utf-8-sig") as handle:
            for row in _csv.DictReader(handle, delimiter=delimiter):
                raw = (row.get(options.path_col) or "").strip()
                path = Path(raw)
                path = path if path.is_absolute() else base / path
                fields: dict[str, object] = {
                    k: v for k, v in row.items() if k not in (options.path_col, options.label_col, options.group_col)
                }
                fields["label"] = (row.get(options.label_col) or "").strip()
                if options.group_col:
                    fields["group"] = (row.get(options.group_col) or "").strip()
                if not raw:
                    yield Candidate(path, fields, problem="empty path in CSV row")
                elif not fields["label"]:
                    yield Candidate(path, fields, problem="empty label in CSV row")
                else:
                    yield Candidate(path, fields)
