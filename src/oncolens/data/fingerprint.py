"""A dataset's fingerprint: what a training recipe needs to know about the images before choosing itself.

Counts per class and patients come from the manifest; image size and colour from a fixed sample of the
images themselves (headers, and a small reduced-scale decode to tell true colour from grey stored as
RGB); the modality from DICOM tags and from words in folder and file names.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from .imageio import UnreadableImage, read_image
from .split import resolve_group_column

__all__ = ["DataFingerprint", "fingerprint", "MODALITIES", "modality_from_words"]

#: modalities a recipe distinguishes, with the words (whole tokens of paths) that suggest each
MODALITY_WORDS: dict[str, tuple[str, ...]] = {
    "histology": ("histo", "histology", "histopathology", "pathology", "patho", "he", "hne", "breakhis", "lc25000",
                  "lymphoma", "oral", "colon", "tissue", "biopsy", "slide", "wsi", "tile", "tiles", "patch", "patches",
                  "camelyon", "pcam", "idc", "nct", "crc", "kather"),
    "mri": ("mri", "mr", "t1", "t2", "flair", "dwi", "glioma", "meningioma", "pituitary", "brats"),
    "ct": ("ct", "cect", "hrct", "tomography", "iqothnccd", "iqoth", "lidc", "kits"),
    "ultrasound": ("ultrasound", "us", "busi", "sonography", "echo", "doppler"),
    "xray": ("xray", "cxr", "radiograph", "radiography", "mammo", "mammography", "cr", "dx"),
}
MODALITIES = (*MODALITY_WORDS, "unknown")
#: DICOM Modality tag values
_DICOM_MODALITY = {"MR": "mri", "CT": "ct", "US": "ultrasound", "CR": "xray", "DX": "xray", "MG": "xray",
                   "SM": "histology", "PT": "ct"}


@dataclass
class DataFingerprint:
    """What the images of a training set are like."""

    n_images: int
    class_counts: dict[str, int]
    n_patients: int | None  # None: the manifest names no patients
    median_side: int  # median of each sampled image's shorter side, in pixels
    greyscale_fraction: float  # sampled images whose channels are (near) equal
    modality: str
    modality_evidence: str
    sampled: int
    unreadable_in_sample: int = 0
    words: dict[str, int] = field(default_factory=dict)  # modality -> number of sampled paths naming it

    @property
    def n_classes(self) -> int:
        return len(self.class_counts)

    @property
    def smallest_class(self) -> int:
        return min(self.class_counts.values()) if self.class_counts else 0

    @property
    def imbalance(self) -> float:
        """Largest class over smallest class (1.0 is balanced)."""
        return max(self.class_counts.values()) / max(self.smallest_class, 1) if self.class_counts else 1.0

    @property
    def greyscale(self) -> bool:
        return self.greyscale_fraction >= 0.5

    def to_dict(self) -> dict:
        return {**asdict(self), "imbalance": round(self.imbalance, 3), "greyscale": self.greyscale}

    def summary(self) -> str:
        patients = f"{self.n_patients} patients" if self.n_patients else "no patient ids"
        counts = ", ".join(f"{k} {v}" for k, v in self.class_counts.items())
        return (f"{self.n_images} images ({counts}; imbalance {self.imbalance:.1f}), {patients}, median shorter side "
                f"{self.median_side} px, {'greyscale' if self.greyscale else 'colour'} "
                f"({self.greyscale_fraction:.0%} of {self.sampled} sampled are grey), modality {self.modality} "
                f"({self.modality_evidence})")


def modality_from_words(paths: list[str]) -> Counter:
    """How many of ``paths`` contain a word (a whole token of the path) of each modality."""
    votes: Counter = Counter()
    for path in paths:
        tokens = set(re.split(r"[^a-z0-9]+", str(path).lower()))
        for modality, words in MODALITY_WORDS.items():
            if tokens.intersection(words):
                votes[modality] += 1
    return votes


def _is_grey(array: np.ndarray) -> bool:
    """True for one channel, or three channels that differ by more than 8 levels in under 1% of pixels."""
    if array.ndim == 2 or array.shape[-1] == 1:
        return True
    a = array.astype(np.int16)
    spread = np.maximum(np.abs(a[..., 0] - a[..., 1]), np.abs(a[..., 1] - a[..., 2]))
    return float((spread > 8).mean()) < 0.01


def fingerprint(frame: pd.DataFrame, label_col: str = "label", sample: int = 48, seed: int = 0) -> DataFingerprint:
    """The fingerprint of the images in ``frame`` (the training images: pass no test rows).

    ``sample`` images, drawn with ``seed`` and stratified by class, are opened for size, colour and tags.
    """
    labels = frame[label_col].astype(str)
    counts = {str(k): int(v) for k, v in sorted(labels.value_counts().items())}
    group_col = resolve_group_column(frame, "auto")
    patients = group_col in ("group", "patient")  # not near-duplicate clusters (a proxy, not people)
    n_patients = int(frame[group_col].astype(str).nunique()) if patients else None
    rng = np.random.default_rng(seed)
    per_class = max(1, sample // max(len(counts), 1))
    chosen: list[int] = []
    for label in counts:
        rows = np.flatnonzero((labels == label).to_numpy())
        chosen.extend(rng.choice(rows, size=min(per_class, len(rows)), replace=False).tolist())
    sides, grey, dicom, bad = [], [], Counter(), 0
    for position in sorted(chosen):
        path = str(frame["path"].iloc[position])
        try:
            loaded = read_image(path, min_size=64)
        except (UnreadableImage, OSError):
            bad += 1
            continue
        width, height = loaded.width, loaded.height
        if loaded.format == "JPEG":  # decoded at reduced scale: take the stored size from the header
            from PIL import Image

            with Image.open(path) as header:
                width, height = header.size
        sides.append(min(width, height))
        grey.append(_is_grey(np.asarray(loaded.image)))
        if loaded.meta.get("modality"):
            dicom[loaded.meta["modality"].upper()] += 1
    words = modality_from_words([frame["path"].iloc[i] for i in chosen])
    if dicom:
        tag, n = dicom.most_common(1)[0]
        modality = _DICOM_MODALITY.get(tag, "unknown")
        evidence = f"DICOM Modality {tag} in {n} of {len(sides)} sampled files"
    elif words:
        (modality, n), *others = words.most_common()
        named = ", ".join(f"{k} {v}" for k, v in words.most_common())
        evidence = f"{n} of {len(chosen)} sampled paths name it ({named})"
        if others and others[0][1] >= n / 4:  # a mixture: no single modality's rules apply
            modality, evidence = "unknown", f"the sampled paths name several modalities ({named})"
    else:
        modality, evidence = "unknown", "no DICOM tag and no modality word in the paths"
    return DataFingerprint(
        n_images=len(frame), class_counts=counts, n_patients=n_patients,
        median_side=int(np.median(sides)) if sides else 0,
        greyscale_fraction=float(np.mean(grey)) if grey else 0.0,
        modality=modality, modality_evidence=evidence, sampled=len(sides), unreadable_in_sample=bad,
        words=dict(words))

