"""A model bundle: a folder with ``model.safetensors`` and ``bundle.json`` (config, classes, preprocessing).

It is everything needed to predict on another machine, without the training data, and it is loaded
without unpickling anything.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from ..data.transforms import Preprocessing
from .registry import OncoClassifier, create_model, prefers_channels_last

__all__ = ["Bundle", "save_bundle", "load_bundle", "BUNDLE_FORMAT", "atomic_write_bytes"]

BUNDLE_FORMAT = 1


@dataclass
class Bundle:
    """A loaded bundle: the model in eval mode plus what it was trained on."""

    model: OncoClassifier
    classes: list[str]
    preprocessing: Preprocessing
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def kind(self) -> str:
        return "flat"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_bundle(model: OncoClassifier, classes: list[str], path: str | Path, meta: dict | None = None) -> Path:
    """Write ``model`` and its metadata to the folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if len(classes) != model.num_classes:
        raise ValueError(f"{len(classes)} class names for a model with {model.num_classes} outputs")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path / "model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, path / "model.safetensors")
    info = {
        "format": BUNDLE_FORMAT,
        "kind": "flat",
        "oncolens_version": __version__,
        "model": {**model.config, "weights": "random"},  # rebuilt empty, then filled from the file
        "trained_from_weights": model.config.get("weights"),
        "classes": list(classes),
        "preprocessing": model.preprocessing.to_dict(),
        "meta": meta or {},
    }
    atomic_write_bytes(path / "bundle.json", json.dumps(info, indent=2).encode())
    return path


def read_bundle_info(path: str | Path) -> dict:
    path = Path(path)
    info_file = path / "bundle.json"
    if not info_file.is_file():
        raise FileNotFoundError(f"{path} is not an oncolens bundle (no bundle.json)")
    info = json.loads(info_file.read_text())
    if info.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: bundle format {info.get('format')} is not supported (expected {BUNDLE_FORMAT})")
    return info


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a flat bundle folder written by :func:`save_bundle` (eval mode, on ``device``)."""
    path = Path(path)
    info = read_bundle_info(path)
    if info.get("kind", "flat") != "flat":
        raise ValueError(f"{path} is a {info['kind']} bundle; load it with oncolens.models.load_any_bundle")
    cfg = info["model"]
    model = create_model(cfg["name"], num_classes=int(cfg["num_classes"]), weights="random", freeze="full",
                         head=cfg["head"], input_size=int(cfg["input_size"]), channels=int(cfg["channels"]))
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    model.config["weights"] = info.get("trained_from_weights", "random")
    model.config["freeze"] = cfg.get("freeze", "full")
    model.eval().to(device)
    if prefers_channels_last(cfg["name"], device):
        model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return Bundle(model=model, classes=info["classes"], preprocessing=Preprocessing.from_dict(info["preprocessing"]),
                  meta=info.get("meta", {}), path=path)
