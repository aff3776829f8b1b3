"""BreaKHis filenames: ``SOB_B_A-14-22549AB-40-001.png`` -> benign, adenosis, patient, 40X."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from .base import Candidate, Layout, LayoutOptions, fit_by_names, iter_image_files, register_layout

BREAKHIS_NAME = re.compile(
    r"^SOB_(?P<tumor>[BM])_(?P<subtype>[A-Z]+)-(?P<year>\d+)-(?P<slide>(?P<patient>\d+)[A-Z]*)-(?P<mag>\d+)-(?P<seq>\d+)\.\w+$",
)
TUMOR_CLASSES = {"B": "benign", "M": "malignant"}
SUBTYPES = {
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}


def parse_breakhis_name(name: str) -> dict[str, object] | None:
    """Labels, patient and magnification from a BreaKHis filename, or None when it is not one.

    >>> parse_breakhis_name("SOB_B_A-14-22549AB-40-001.png")["patient"]
    '14-22549'
    """
    match = BREAKHIS_NAME.match(name)
    if not match or match["subtype"] not in SUBTYPES:
        return None
    return {
        "label": TUMOR_CLASSES[match["tumor"]],
        "tumor_class": TUMOR_CLASSES[match["tumor"]],
        "subtype": SUBTYPES[match["subtype"]],
        # the slide letters (AB, CD, ...) are sections of one patient: dropped for the patient key
        "patient": f"{match['year']}-{match['patient']}",
        "slide": f"{match['year']}-{match['slide']}",
        "group": f"{match['year']}-{match['patient']}",
        "magnification": f"{match['mag']}X",
    }


@register_layout("breakhis")
class BreakhisLayout(Layout):
    description = "BreaKHis filenames (benign/malignant, 8 subtypes, patient, magnification)"

    def detect(self, root: Path) -> float:
        return fit_by_names(root, lambda p: parse_breakhis_name(p.name) is not None)

    def columns(self, root: Path, options: LayoutOptions) -> list[str]:
        return ["label", "tumor_class", "subtype", "patient", "slide", "group", "magnification"]

    def candidates(self, root: Path, options: LayoutOptions) -> Iterator[Candidate]:
        problems: list[Candidate] = []
        for path in iter_image_files(root, options.exclude, problems):
            fields = parse_breakhis_name(path.name)
            if fields is None:
                yield Candidate(path, problem="filename does not follow the BreaKHis pattern SOB_<B|M>_<type>-<yy>-<patient>-<mag>-<seq>")
            else:
                yield Candidate(path, fields)
        yield from problems

