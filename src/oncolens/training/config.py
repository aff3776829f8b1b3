"""Training configuration: defaults, then a YAML file, then command-line flags (later wins)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from ..errors import ConfigError

__all__ = ["TrainConfig", "load_config"]


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved resolved in the run folder."""

    data: str = ""
    label_col: str = "label"
    model: str = "tf_efficientnet_lite0"
    weights: str = "auto"  # auto | random | imagenet | path to checkpoint or bundle
    head: str | None = None  # linear | seed000 | seed004 | own (model default when None)
    freeze: str = "auto"  # auto | full | frozen | last-N
    image_size: int | None = None
    channels: int | None = None
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0
    class_weights: bool = False
    balanced_sampling: bool = False
    patience: int = 3
    lr_patience: int = 2
    lr_factor: float = 0.5
    seed: int = 42
    deterministic: bool = True
    device: str = "auto"  # auto | cpu | cuda
    augment: bool = True
    hflip: bool = True
    vflip: bool = False
    rotation: float = 15.0
    zoom: float = 0.1
    contrast: float = 0.2
    feature_cache: str = "auto"  # auto | disk | memory | off  (frozen backbones only)
    cache_views: int = 1  # augmented views cached per image when augmenting a frozen backbone; 0 recomputes
    cache_dir: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    runs_dir: str = "runs"
    name: str | None = None
    num_workers: int = 0
    threads: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / (self.name or "run")


def load_config(yaml_path: str | Path | None = None, **overrides) -> TrainConfig:
    """Defaults, updated by ``yaml_path`` (if given), updated by every override that is not None."""
    known = {f.name for f in fields(TrainConfig)}
    values: dict = {}
    if yaml_path:
        loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping of option: value")
        unknown = set(loaded) - known
        if unknown:
            raise ConfigError(f"{yaml_path}: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        values.update(loaded)
    unknown = set(overrides) - known
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)
