"""Label maps: evaluate a model trained on one dataset on another, in a shared label space.

A map is YAML of ``target: [source patterns]`` (shell-style wildcards allowed)::

    normal: [benign, normal, no_tumor, notumor, "*_normal"]
    tumor: [malignant, glioma, meningioma, pituitary, "*_tumor"]

It applies to the model's classes (their probabilities are summed per target) and to the data's
labels. Anything it leaves unmapped is reported, never silently dropped.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..errors import ConfigError, InputNotFound

__all__ = ["LabelMap", "MappedPredictions", "load_label_map", "NORMAL_VS_TUMOR"]

#: A built-in map for the transferability study: every benign/normal class -> normal, the rest -> tumor.
NORMAL_VS_TUMOR = {
    "normal": ["normal", "*_normal", "*_n", "benign", "*benign*", "no_tumor", "notumor", "no_tumour", "healthy",
               "idc_negative", "*normal*", "cyst"],
    "tumor": ["*"],
}


@dataclass
class MappedPredictions:
    """Labels and probabilities in the target space, plus what could not be mapped."""

    classes: list[str]
    y: np.ndarray
    proba: np.ndarray
    kept: np.ndarray
    unmapped_labels: dict[str, int] = field(default_factory=dict)
    unmapped_model_classes: list[str] = field(default_factory=list)
    dropped_probability_mean: float = 0.0

    def notes(self) -> list[str]:
        out = []
        if self.unmapped_labels:
            out.append("data labels left out (not in the label map): "
                       + ", ".join(f"{k} ({v} images)" for k, v in self.unmapped_labels.items()))
        if self.unmapped_model_classes:
            out.append(f"model classes not in the label map: {', '.join(self.unmapped_model_classes)}; their "
                       f"probability (mean {self.dropped_probability_mean:.3f}) was removed and the rest renormalised")
        return out


@dataclass
class LabelMap:
    """Ordered ``target -> patterns``; the first target whose pattern matches a label wins."""

    targets: dict[str, list[str]]

    @property
    def classes(self) -> list[str]:
        return list(self.targets)

    def target_of(self, label: str) -> str | None:
        lowered = label.lower()
        for target, patterns in self.targets.items():
            if any(fnmatch.fnmatchcase(lowered, p.lower()) for p in patterns):
                return target
        return None

    def apply(self, labels: Sequence[str], model_classes: Sequence[str], proba: np.ndarray) -> MappedPredictions:
        """Map data ``labels`` and model probabilities (over ``model_classes``) to this map's classes."""
        classes = self.classes
        matrix = np.zeros((len(model_classes), len(classes)))
        unmapped_model = []
        for i, name in enumerate(model_classes):
            target = self.target_of(name)
            if target is None:
                unmapped_model.append(name)
            else:
                matrix[i, classes.index(target)] = 1.0
        mapped = np.asarray(proba) @ matrix
        mass = mapped.sum(1, keepdims=True)
        dropped = float(1 - mass.mean()) if len(mass) else 0.0
        mapped = np.divide(mapped, mass, out=np.full_like(mapped, 1 / len(classes)), where=mass > 0)
        targets = [self.target_of(str(label)) for label in labels]
        kept = np.array([t is not None for t in targets], dtype=bool)
        unmapped: dict[str, int] = {}
        for label, target in zip(labels, targets):
            if target is None:
                unmapped[str(label)] = unmapped.get(str(label), 0) + 1
        y = np.array([classes.index(t) for t in targets if t is not None], dtype=int)
        return MappedPredictions(classes=classes, y=y, proba=mapped[kept], kept=kept, unmapped_labels=unmapped,
                                 unmapped_model_classes=unmapped_model, dropped_probability_mean=dropped)


def load_label_map(source: str | Path | dict) -> LabelMap:
    """A :class:`LabelMap` from a YAML file, a dict, or a built-in name (``normal-vs-tumor``)."""
    if isinstance(source, dict):
        data = source
    elif str(source) in ("normal-vs-tumor", "normal_vs_tumor"):
        data = NORMAL_VS_TUMOR
    else:
        path = Path(source)
        if not path.is_file():
            raise InputNotFound(f"label map not found: {path} (or use the built-in 'normal-vs-tumor')")
        data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not data:
        raise ConfigError("a label map is a mapping of target class -> list of source labels")
    targets = {}
    for target, patterns in data.items():
        if isinstance(patterns, str):
            patterns = [patterns]
        if not isinstance(patterns, list) or not all(isinstance(p, (str, int)) for p in patterns):
            raise ConfigError(f"label map entry {target!r} must be a list of labels or patterns")
        targets[str(target)] = [str(p) for p in patterns]
    if len(targets) < 2:
        raise ConfigError("a label map needs at least two target classes")
    return LabelMap(targets)
