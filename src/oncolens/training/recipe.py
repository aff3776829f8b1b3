"""The self-configuring recipe: every training option left unset is chosen from the data's fingerprint.

Like nnU-Net's rule-based configuration, the choices are fixed rules of the fingerprint (not a search),
each with a reason a user can read and a flag that overrides it. The rules come from the measurements
in docs/results.md (issue 14): on the DEV datasets a logistic-regression probe on frozen ImageNet
features beats SGD-trained heads, so a pretrained model starts as that probe; fine-tuning the last
blocks from the probe is a second stage only where there are enough images to gain from it, and the
run keeps whichever stage has the lower validation loss.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import pandas as pd

from ..data.fingerprint import DataFingerprint, fingerprint
from ..models import get_spec
from ..models.pretrained import offline_weights_available
from .config import PLAIN_DEFAULTS, TrainConfig

__all__ = ["BACKBONES", "FINETUNE_MIN_IMAGES", "FINETUNE_MIN_PER_CLASS", "LARGER_BACKBONE_MIN_IMAGES", "TIME_BUDGET_S",
           "Recipe", "configure"]

#: offline-weight backbones the recipe chooses among: (name, input side, seconds per image on 2 CPU cores
#: for one feature pass (decode + forward), seconds per image for one fine-tuning step of the last blocks)
BACKBONES: tuple[tuple[str, int, float, float], ...] = (
    ("tf_efficientnet_lite0", 224, 0.012, 0.030),
    ("tf_efficientnet_lite1", 240, 0.020, 0.045),
    ("tf_efficientnet_lite2", 260, 0.030, 0.065),
)
#: fine-tune only with at least this many training images, and this many in the smallest class
FINETUNE_MIN_IMAGES = 150
FINETUNE_MIN_PER_CLASS = 15
#: the whole run (feature pass + fine-tuning epochs) should take at most this long on 2 CPU cores
TIME_BUDGET_S = 300.0
#: a larger backbone only from this many training images: on the DEV datasets (150-600 images) Lite2's
#: linear probe was not better than Lite0's (docs/results.md)
LARGER_BACKBONE_MIN_IMAGES = 2000
FINETUNE_BLOCKS = "last-3"

#: augmentation per modality: (hflip, vflip, rot90, rotation, zoom, contrast, colour, tta, why)
_AUGMENT: dict[str, tuple] = {
    "histology": (True, True, True, 0.0, 0.1, 0.1, 0.1, "flip",
                  "tissue has no up or left: flips and 90-degree rotations; brightness/saturation/hue jitter for "
                  "H&E stain variation; flip TTA (2 forward passes)"),
    "mri": (True, False, False, 10.0, 0.1, 0.2, 0.0, "none",
            "axial brain-like slices: left-right flips (the classes do not depend on the side), small rotations, "
            "zoom and contrast; no vertical flips or 90-degree rotations (anatomy has an up)"),
    "ct": (False, False, False, 10.0, 0.1, 0.2, 0.0, "none",
           "CT: no flips (laterality: the body's left and right differ, e.g. heart, liver), small rotations, zoom, "
           "contrast"),
    "ultrasound": (True, False, False, 10.0, 0.1, 0.2, 0.0, "none",
                   "ultrasound: left-right flips (probe orientation varies), small rotations, zoom, contrast; the "
                   "depth axis keeps its direction"),
    "xray": (False, False, False, 5.0, 0.05, 0.2, 0.0, "none",
             "radiographs: no flips (laterality markers and anatomy have sides), very small rotations and zoom"),
    "unknown-grey": (False, False, False, 10.0, 0.1, 0.2, 0.0, "none",
                     "greyscale images of unknown modality, treated like radiology: no flips in case laterality "
                     "matters"),
}
_AUGMENT["unknown-colour"] = (*_AUGMENT["histology"][:-1],
                              "colour images of unknown modality, treated like microscopy (orientation-free): flips, "
                              "90-degree rotations, colour jitter; set --modality if that is wrong")
_AUG_FIELDS = ("hflip", "vflip", "rot90", "rotation", "zoom", "contrast", "colour", "tta")


@dataclass
class Recipe:
    """A configuration with every unset option chosen, the reason for each choice and the fingerprint."""

    config: TrainConfig
    reasons: dict[str, str] = field(default_factory=dict)
    fingerprint: DataFingerprint | None = None
    estimated_seconds: float | None = None

    def lines(self) -> list[str]:
        """One line per reason: ``name = value, name = value: reason``."""
        by_reason: dict[str, list[str]] = {}
        for name, why in self.reasons.items():
            by_reason.setdefault(why, []).append(f"{name}={getattr(self.config, name)}")
        return [f"{', '.join(names)}: {why}" for why, names in by_reason.items()]

    def to_dict(self) -> dict:
        return {"chosen": {k: {"value": getattr(self.config, k), "reason": v} for k, v in self.reasons.items()},
                "fingerprint": self.fingerprint.to_dict() if self.fingerprint else None,
                "estimated_seconds": self.estimated_seconds}


def _training_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows a recipe may look at: training and validation images, never the test split."""
    if "split" in frame.columns and frame["split"].isin(["train", "val"]).any():
        return frame[frame["split"].isin(["train", "val"])]
    return frame


def _estimate(backbone: tuple, n_images: int, n_train: int, epochs: int, finetune: bool) -> float:
    _, _, feature_s, step_s = backbone
    seconds = n_images * feature_s
    if finetune:
        seconds += epochs * (n_train * step_s + (n_images - n_train) * feature_s)
    return seconds


def _pick_backbone(fp: DataFingerprint, n_images: int, n_train: int, epochs: int,
                   finetune_possible: bool) -> tuple[str, str]:
    """The largest offline-weight backbone whose input the images fill and whose run fits the time budget,
    and why."""
    available = [b for b in BACKBONES if offline_weights_available(b[0])] or [BACKBONES[0]]
    pick = available[0]
    for candidate in available[1:]:
        fits = candidate[1] <= fp.median_side
        cost = _estimate(candidate, n_images, n_train, epochs, finetune_possible)
        if fits and cost <= TIME_BUDGET_S and n_train >= LARGER_BACKBONE_MIN_IMAGES:
            pick = candidate
    why = (f"ImageNet weights available offline; input {pick[1]} px "
           f"{'<=' if pick[1] <= fp.median_side else '>'} the images' median shorter side {fp.median_side} px")
    larger = [b[0] for b in available if b[1] > pick[1]]
    if larger:
        why += (f"; {', '.join(larger)} only from {LARGER_BACKBONE_MIN_IMAGES:,} training images (their probe was "
                f"not better on the 150-600-image DEV datasets), images at least their input side and a run of "
                f"at most {TIME_BUDGET_S / 60:.0f} min")
    return pick[0], why


def configure(config: TrainConfig, frame: pd.DataFrame) -> Recipe:
    """Choose every option of ``config`` left unset (None) from the fingerprint of ``frame``'s training rows.

    Options the user set are kept and shape the rest (a given model decides whether a probe applies). With
    ``recipe: off`` nothing is chosen here (the plain defaults apply later).
    """
    config = copy.deepcopy(config)
    recipe = Recipe(config=config)
    if config.recipe == "off":
        return recipe
    rows = _training_rows(frame)
    fp = fingerprint(rows, label_col=config.label_col, seed=config.seed)
    recipe.fingerprint = fp
    n_images = fp.n_images
    n_train = int((rows["split"] == "train").sum()) if "split" in rows.columns else n_images

    def choose(name: str, value, why: str) -> None:
        if getattr(config, name) is None:
            setattr(config, name, value)
            recipe.reasons[name] = why

    # modality, then the augmentations that fit it
    modality_why = f"fingerprint: {fp.modality_evidence}"
    if fp.modality == "unknown":
        modality_why += f"; {'greyscale' if fp.greyscale else 'colour'} images"
    choose("modality", fp.modality, modality_why)
    key = config.modality if config.modality != "unknown" else ("unknown-grey" if fp.greyscale else "unknown-colour")
    *values, why = _AUGMENT[key]
    for name, value in zip(_AUG_FIELDS, values):
        choose(name, value, why)

    # backbone and input resolution: the largest offline-weight model whose input the images fill and whose
    # run fits the time budget
    finetune_possible = n_train >= FINETUNE_MIN_IMAGES and fp.smallest_class >= FINETUNE_MIN_PER_CLASS
    epochs = min(8, max(3, math.ceil(3000 / max(n_train, 1))))
    if config.model is None:
        choose("model", *_pick_backbone(fp, n_images, n_train, epochs, finetune_possible))
    spec = get_spec(config.model)
    pretrained = config.weights not in ("random",) and (config.weights != "auto" or spec.imagenet_offline)
    frozen_ok = config.freeze in ("auto", "frozen")
    user_froze = config.freeze == "frozen"  # an explicit --freeze frozen: no stage unfreezes blocks

    if pretrained and frozen_ok and config.head in (None, "logreg"):
        choose("head", "logreg", "pretrained features: a logistic-regression probe (L2 strength by grouped CV) beats "
                                 "SGD-trained heads on small medical datasets (docs/results.md)")
        if config.head == "logreg" and config.freeze == "auto":
            config.freeze = "frozen"
            recipe.reasons["freeze"] = "the probe is fitted on frozen features"
        if user_froze:
            choose("finetune", "off", "--freeze frozen: the backbone stays frozen, so no fine-tuning stage (the "
                                      "probe alone)")
        elif finetune_possible:
            choose("finetune", FINETUNE_BLOCKS,
                   f"{n_train} training images, smallest class {fp.smallest_class}: enough to gain from tuning the "
                   f"last blocks after the probe (from {FINETUNE_MIN_IMAGES} images / {FINETUNE_MIN_PER_CLASS} per "
                   f"class); the run keeps whichever stage has the lower validation loss")
            choose("lr", 1e-4, "fine-tuning pretrained blocks: a small learning rate keeps the ImageNet features")
            choose("epochs", epochs, f"about 3,000 image steps ({n_train} training images), between 3 and 8 epochs")
            choose("patience", 2, "stop after 2 epochs without a better validation loss")
        else:
            choose("finetune", "off", f"{n_train} training images, smallest class {fp.smallest_class}: too few to "
                                      f"fine-tune safely (needs {FINETUNE_MIN_IMAGES} / {FINETUNE_MIN_PER_CLASS} per "
                                      f"class); the probe alone")
    elif not pretrained:
        choose("lr", 1e-3, "training from random weights: a larger learning rate")
    elif config.head not in (None, "logreg"):
        choose("lr", 1e-3, f"a {config.head} head trained by SGD on frozen features")
    choose("class_weights", fp.imbalance >= 1.5,
           f"class imbalance {fp.imbalance:.1f} (largest/smallest class) {'>=' if fp.imbalance >= 1.5 else '<'} 1.5")
    backbone = next((b for b in BACKBONES if b[0] == config.model), None)
    if backbone:
        recipe.estimated_seconds = _estimate(backbone, n_images, n_train, config.epochs or PLAIN_DEFAULTS["epochs"],
                                             (config.finetune or "off") != "off")
    return recipe
