"""IDC patch folders: ``<patient>/<0|1>/<patient>_idx5_x51_y1251_class0.png``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from .base import Candidate, Layout, LayoutOptions, fit_by_names, iter_image_files, register_layout

IDC_NAME = re.compile(r"_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<cls>[01])\.\w+$")
IDC_LABELS = {"0": "idc_negative", "1": "idc_positive"}


@register_layout("idc")
class IdcLayout(Layout):
    description = "IDC patches <patient>/<0|1>/<...>_class<0|1>.png (patient-grouped)"

    def detect(self, root: Path) -> float:
        return fit_by_names(root, lambda p: bool(IDC_NAME.search(p.name)) and p.parent.name in IDC_LABELS)

    def columns(self, root: Path, options: LayoutOptions) -> list[str]:
        return ["label", "patient", "group", "x", "y"]

    def candidates(self, root: Path, options: LayoutOptions) -> Iterator[Candidate]:
        problems: list[Candidate] = []
        for path in iter_image_files(root, options.exclude, problems):
            match = IDC_NAME.search(path.name)
            folder_class = path.parent.name
            if not match or folder_class not in IDC_LABELS:
                yield Candidate(path, problem="not an IDC patch (<patient>/<0|1>/<...>_x<X>_y<Y>_class<0|1>.png)")
                continue
            if match["cls"] != folder_class:
                yield Candidate(path, problem=f"class in filename ({match['cls']}) contradicts its folder ({folder_class})")
                continue
            patient = path.parent.parent.name
            yield Candidate(
                path,
                {"label": IDC_LABELS[folder_class], "patient": patient, "group": patient,
                 "x": int(match["x"]), "y": int(match["y"])},
            )
        yield from problems

