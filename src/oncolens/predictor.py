"""Predictor: a bundle in, probabilities out, preprocessing exactly as in training."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import build_transforms, read_image
from .models.bundle import Bundle, load_bundle

__all__ = ["Prediction", "Predictor"]


@dataclass
class Prediction:
    """Class probabilities of one image, with the top classes first."""

    probabilities: dict[str, float]
    source: str = ""

    @property
    def label(self) -> str:
        return max(self.probabilities, key=self.probabilities.get)

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self, k: int | None = None) -> dict:
        top = self.top(k or len(self.probabilities))
        return {"source": self.source, "label": self.label, "confidence": self.confidence,
                "top": [{"label": name, "probability": p} for name, p in top]}


class Predictor:
    """Loads a bundle once and predicts on PIL images or files, in batches."""

    def __init__(self, bundle: Bundle, batch_size: int = 32):
        self.bundle = bundle
        self.model = bundle.model.eval()
        self.classes = bundle.classes
        self.transform = build_transforms(bundle.preprocessing, train=False)
        self.batch_size = batch_size

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu", **kwargs) -> "Predictor":
        return cls(load_bundle(path, device=device), **kwargs)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])

    @torch.inference_mode()
    def predict_proba(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(n_images, n_classes)`` probabilities."""
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = self.preprocess(images[start:start + self.batch_size]).to(device)
            out.append(torch.softmax(self.model(batch).float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def predict(self, images: Sequence[Image.Image], sources: Sequence[str] | None = None) -> list[Prediction]:
        proba = self.predict_proba(images)
        sources = sources or [""] * len(images)
        return [Prediction(dict(zip(self.classes, map(float, row))), source=src) for row, src in zip(proba, sources)]

    def predict_files(self, paths: Sequence[str | Path]) -> tuple[list[Prediction], dict[str, str]]:
        """Predictions for the readable files, and ``{path: reason}`` for the others."""
        images, sources, failed = [], [], {}
        for path in paths:
            try:
                images.append(read_image(path).image)
                sources.append(str(path))
            except Exception as exc:  # UnreadableImage, or anything a broken file triggers
                failed[str(path)] = getattr(exc, "reason", str(exc))
        return self.predict(images, sources), failed
