"""Training configuration: defaults, then a YAML file, then command-line flags (later wins)."""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from ..data.limits import LIMITS, check_count
from ..errors import ConfigError, InputNotFound

__all__ = ["TrainConfig", "load_config", "PLAIN_DEFAULTS", "STUDY_DEFAULTS", "study_defaults", "study_config"]


def _option(default, help: str, shown: str | None = None):
    """A configuration field with the help text the CLI shows for its flag (``shown``: how a default of
    None is shown)."""
    return field(default=default, metadata={"help": help, **({"shown": shown} if shown else {})})


def _chosen(help: str):
    """A field the self-configuring recipe chooses when it is left unset (None)."""
    return field(default=None, metadata={"help": help, "shown": "recipe"})


#: what every recipe-chosen field means with ``recipe: off`` (the pre-recipe defaults)
PLAIN_DEFAULTS: dict = {"model": "tf_efficientnet_lite0", "epochs": 10, "lr": 1e-4, "class_weights": False,
                        "patience": 3, "hflip": True, "vflip": False, "rotation": 15.0, "zoom": 0.1, "contrast": 0.2,
                        "rot90": False, "colour": 0.0, "tta": "none", "finetune": "off", "modality": "unknown"}

#: the studies' runs reproduce the seeds: (value, reason) of each option a study sets unless it is given;
#: ``pretraining`` fine-tunes pretrained weights whole, at the pretrained rate
STUDY_DEFAULTS: dict[str, dict[str, tuple]] = {
    "study": {"model": ("seed_cnn", "the seeds' small CNN"), "epochs": (10, "the seeds' 10 epochs"),
              "lr": (1e-3, "the seeds' learning rate"), "augment": (False, "the seeds trained without augmentation"),
              "recipe": ("off", "a study compares its variants under one fixed recipe")},
    "pretraining": {"epochs": (10, "the seeds' 10 epochs"),
                    "lr": (1e-4, "fine-tuning pretrained weights whole: a small learning rate"),
                    "augment": (False, "the seeds trained without augmentation"),
                    "recipe": ("off", "a study compares its variants under one fixed recipe")},
}


def study_defaults(kind: str = "study") -> dict:
    """The option values a study of ``kind`` sets unless given (see :data:`STUDY_DEFAULTS`)."""
    return {name: value for name, (value, _) in STUDY_DEFAULTS[kind].items()}


def study_config(kind: str = "study", **given) -> "TrainConfig":
    """The training configuration of a study's runs: its defaults, then the ``given`` options (None: not given),
    each checked as ``train`` checks it."""
    return load_config(None, **{**study_defaults(kind), **{k: v for k, v in given.items() if v is not None}})


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved resolved in the run folder."""

    data: str = _option("", "manifest CSV (with or without a split column)")
    label_col: str = _option("label", "manifest column to predict")
    recipe: str = _option("auto", "auto: choose every option left unset from the data's fingerprint (reasons printed "
                                  "and kept in config.yaml); off: the plain defaults")
    modality: str | None = _chosen("histology, mri, ct, ultrasound, xray or unknown (default: from DICOM tags and "
                                   "path words); decides the augmentations")
    model: str | None = _chosen("model name (see `oncolens models`)")
    weights: str = _option("auto", "auto, random, imagenet, or a checkpoint/bundle path")
    head: str | None = _chosen("linear, logreg (the linear probe: L2 logistic regression, C by grouped CV), "
                               "seed000, seed004, own (the model's)")
    freeze: str = _option("auto", "auto, full, frozen, last-N")
    finetune: str | None = _chosen("second stage after the linear probe: off, or last-N (unfreeze the last N "
                                   "blocks and train them at --lr for --epochs)")
    stages: str | None = _option(None, "training stages in order, comma-separated: probe, train, finetune or a "
                                       "registered one (default: probe with --head logreg, then finetune with "
                                       "--finetune; otherwise train)", shown="from --head/--finetune")
    image_size: int | None = _option(None, "input side in pixels (default: the model's)")
    channels: int | None = _option(None, "1 (greyscale) or 3 (RGB) (default: the model's)")
    epochs: int | None = _chosen("training epochs (of the fine-tuning stage after a linear probe)")
    batch_size: int = _option(16, "images per batch")
    lr: float | None = _chosen("learning rate")
    optimizer: str = _option("adam", "adam, adamw, sgd")
    weight_decay: float = _option(0.0, "L2 weight decay")
    class_weights: bool | None = _chosen("weight the loss by inverse class frequency")
    balanced_sampling: bool = _option(False, "sample classes equally often")
    patience: int | None = _chosen("early-stopping patience (epochs without a better validation loss)")
    lr_patience: int = _option(2, "epochs without improvement before the learning rate drops")
    lr_factor: float = _option(0.5, "learning-rate drop factor on a plateau")
    seed: int = _option(42, "random seed")
    deterministic: bool = _option(True, "deterministic algorithms (reproducible, may be slower)")
    device: str = _option("auto", "auto, cpu, cuda")
    augment: bool = _option(True, "augment training images (the flags below)")
    hflip: bool | None = _chosen("augmentation: horizontal flips")
    vflip: bool | None = _chosen("augmentation: vertical flips")
    rot90: bool | None = _chosen("augmentation: 90-degree rotations")
    rotation: float | None = _chosen("augmentation: largest rotation in degrees")
    zoom: float | None = _chosen("augmentation: largest zoom fraction")
    contrast: float | None = _chosen("augmentation: contrast jitter")
    colour: float | None = _chosen("augmentation: brightness/saturation jitter (hue a quarter of it): H&E stain "
                                   "variation")
    stain_norm: str | None = _option(None, "stain normalisation fitted on a target tile, stored in the bundle so that "
                                           "prediction normalises alike: macenko:PATH or reinhard:PATH")
    hed: float = _option(0.0, "augmentation: H&E stain (HED) jitter strength, each stain scaled by 1 +- hed and "
                              "shifted by +- hed/4 (Tellez et al. 2018: 0.05 light, 0.2 strong); colour images only")
    feature_cache: str = _option("auto", "auto, disk, memory, off (frozen backbones)")
    cache_views: int = _option(1, "augmented views to cache per image; 0 recomputes")
    cache_dir: str | None = _option(None, "feature-cache folder (default: <runs-dir>/.feature_cache)")
    cache_max_gb: float | None = _option(None, "size limit of the feature and image caches; least recently used "
                                               "entries are removed beyond it", shown="what they hold + 25% of free disk")
    group_by: str = _option("auto", "without patient ids, how splits, folds and the calibration split are grouped: "
                                    "auto/embedding (look-alike groups of a frozen EfficientNet-Lite0's features, "
                                    "threshold chosen from the data, plus exact and perceptual duplicates), phash "
                                    "(duplicates only) or none (by image)")
    group_threshold: float | None = _option(None, "cosine similarity that makes two images look-alikes",
                                            shown="chosen from the data")
    val_fraction: float = _option(0.1, "validation fraction when the manifest has no val split")
    test_fraction: float = _option(0.2, "test fraction when the manifest has no split at all")
    runs_dir: str = _option("runs", "parent folder of run folders")
    name: str | None = _option(None, "run name (folder <runs-dir>/<name>)")
    num_workers: int | None = _option(None, "image-decoding worker processes (default: from the device and core "
                                            "count: none on a CPU with fewer than 8 cores, where decoding competes "
                                            "with the model for the cores)", shown="auto")
    image_cache: bool = _option(False, "keep decoded, resized training and validation images in a memory-mapped "
                                       "file (<cache-dir>/images) so that epochs after the first skip decoding "
                                       "(fine-tuning; channels x size^2 bytes per image on disk)")
    tta: str | None = _chosen("test-time augmentation stored in the bundle: none, flip, or dihedral (flips and "
                              "90-degree rotations, for histology)")
    threads: int | None = _option(None, "CPU threads")
    calibrate: bool = _option(True, "after training: temperature scaling and conformal prediction sets on the "
                                    "validation images, out-of-distribution detectors from the training images")
    alpha: float = _option(0.1, "default error rate of the conformal prediction sets (coverage 1 - alpha)")
    intended_use: str | None = _option(None, "what the model is for, in the bundle's model card (default: research "
                                             "only, not for diagnosis)")
    tracking: str = _option("auto", "run tracking: auto (TensorBoard in <run>/tb when installed), none, "
                                    "tensorboard, mlflow (SQLite store <runs-dir>/mlflow.db), or both comma-separated")

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self, comments: dict[str, str] | None = None) -> str:
        """The configuration as YAML; ``comments`` (option -> text) go on a comment line above each option."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, width=10_000)
        if not comments:
            return text
        lines = []
        for line in text.splitlines():
            key = line.split(":", 1)[0]
            if key in comments:
                lines.append(f"# {key}: {' '.join(comments[key].split())}")
            lines.append(line)
        return "\n".join(lines) + "\n"

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / (self.name or "run")


#: fields that must be at least 0 (sizes and counts: :data:`~oncolens.data.limits.LIMITS`)
_NON_NEGATIVE = ("hed", "weight_decay", "cache_max_gb", "rotation", "zoom", "contrast", "colour")


def _field_types() -> dict[str, tuple[type, bool]]:
    """Each field's base type and whether it may be None."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for name, hint in hints.items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = (args[0] if args else hint, type(None) in typing.get_args(hint))
    return out


def _tta_views() -> list[str]:
    from ..models.scoring import TTA_VIEWS  # imported when a value is checked: the CLI starts without torch

    return list(TTA_VIEWS)


def _modalities() -> list[str]:
    from ..data.fingerprint import MODALITIES

    return list(MODALITIES)


def _checked(name: str, value, where: str):
    """``value`` as the type of field ``name`` (ints accepted for floats), or a ConfigError naming it."""
    base, optional = _field_types()[name]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}option {name!r} needs a value, got null")
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if base is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}option {name!r} must be true or false, got {value!r}")
    if base is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}option {name!r} must be a whole number, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(f"{where}option {name!r} must be a {base.__name__}, got {value!r}")
    if base is float and not math.isfinite(value):
        raise ConfigError(f"{where}option {name!r} must be a finite number, got {value!r}")
    if name in LIMITS:
        check_count(value, name, f"{where}option {name!r}")
    if (name in _NON_NEGATIVE or name == "lr") and value < 0 or name == "lr" and value == 0:
        raise ConfigError(f"{where}option {name!r} must be {'positive' if name == 'lr' else 'at least 0'}, got {value!r}")
    if name == "tta" and value not in _tta_views():
        raise ConfigError(f"{where}option 'tta' must be one of {', '.join(_tta_views())}, got {value!r}")
    if name == "name" and (value.strip(".") == "" or any(c in value for c in "/\\\0")):
        raise ConfigError(f"{where}option 'name' is a folder name under runs_dir: no '/', '\\', NUL, '.' or "
                          f"'..', got {value!r}")
    if name == "recipe" and value not in ("auto", "off"):
        raise ConfigError(f"{where}option 'recipe' must be auto or off, got {value!r}")
    if name == "modality" and value not in _modalities():
        raise ConfigError(f"{where}option 'modality' must be one of {', '.join(_modalities())}, got {value!r}")
    if name == "finetune" and value != "off" and not (value.startswith("last-") and value[5:].isdigit()):
        raise ConfigError(f"{where}option 'finetune' must be off or last-N (e.g. last-3), got {value!r}")
    if name == "group_by" and value not in ("auto", "embedding", "phash", "none"):
        raise ConfigError(f"{where}option 'group_by' must be auto, embedding, phash or none, got {value!r}")
    if name == "group_threshold" and not -1 <= value <= 1:
        raise ConfigError(f"{where}option 'group_threshold' is a cosine similarity in [-1, 1], got {value!r}")
    if name == "alpha" and not 0 < value < 1:
        raise ConfigError(f"{where}option 'alpha' must be between 0 and 1, got {value!r}")
    if name in ("val_fraction", "test_fraction") and not 0 <= value < 1:
        raise ConfigError(f"{where}option {name!r} must be in [0, 1), got {value!r}")
    return value


def load_config(yaml_path: str | Path | None = None, **overrides) -> TrainConfig:
    """Defaults, updated by ``yaml_path`` (if given), updated by every override that is not None;
    every value is checked against its field's type and range (a clear error names the option)."""
    known = {f.name for f in fields(TrainConfig)}
    values: dict = {}
    if yaml_path:
        path = Path(yaml_path)
        if not path.is_file():
            raise InputNotFound(f"configuration file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of option: value")
        unknown = set(loaded) - known
        if unknown:
            raise ConfigError(f"{path}: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        values.update({k: _checked(k, v, f"{path}: ") for k, v in loaded.items()})
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)}")
    values.update({k: _checked(k, v, "") for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)
