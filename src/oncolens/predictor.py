"""Predictor: a bundle in; probabilities, an explanation map and contours/boxes out.

The apps (CLI, Streamlit, REST API) use only this. PyTorch and ONNX Runtime back-ends share the
interface; explanations always use the PyTorch model (they need its gradients and layers). Predictions
of a tree of classifiers carry the decision at every level.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .data import decode_image
from .distributed import Distributed
from .errors import ConfigError, renamed_keyword
from .models.bundle import ModelBundle, load_any_bundle
from .models.scoring import SCORING_BATCH, Backend, Scores, tta_views
from .models.scoring_job import ScoringJob
from .models.trust import Assessment

if TYPE_CHECKING:
    from .explain import ExplainOptions

log = logging.getLogger(__name__)

__all__ = ["Prediction", "Predictor", "ExplainedPrediction"]


@dataclass
class Prediction:
    """Class probabilities of one image, with the top classes first.

    For a hierarchical bundle, ``decided`` is the routed leaf (it can differ from the most probable
    leaf) and ``levels`` has one entry per level the image passed: level, label, confidence, probabilities.
    """

    probabilities: dict[str, float]
    source: str = ""
    decided: str | None = None
    levels: list[dict] = field(default_factory=list)
    trust: Assessment | None = None  # None: the bundle has no calibration (trained before it existed)

    @property
    def label(self) -> str:
        return self.decided or max(self.probabilities, key=self.probabilities.get)

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self, k: int | None = None) -> dict:
        top = self.top(k or len(self.probabilities))
        out = {"source": self.source, "label": self.label, "confidence": self.confidence,
               "top": [{"label": name, "probability": p} for name, p in top]}
        if self.levels:
            out["levels"] = self.levels
        if self.trust is None:
            out["calibration"] = "none: this bundle has no calibration (run `oncolens calibrate` on it)"
        else:
            out.update(self.trust.to_dict())
            out["warning"] = self.trust.warning
        return out

    def to_row(self, k: int, trust_fields: Sequence[str] = ()) -> dict:
        """One flat row of a predictions file (CSV or JSON lines): label, per-level decisions, top ``k``,
        and the trust verdict's ``trust_fields``."""
        record = self.to_dict(k)
        return {"image": record["source"], "label": record["label"], "confidence": record["confidence"],
                **{f"{lv['level']}_label": lv["label"] for lv in self.levels},
                **{f"{lv['level']}_confidence": lv["confidence"] for lv in self.levels},
                **{f"top{i + 1}_label": t["label"] for i, t in enumerate(record["top"])},
                **{f"top{i + 1}_probability": t["probability"] for i, t in enumerate(record["top"])},
                **{f: ("|".join(record[f]) if f == "prediction_set" and record.get(f) is not None else record.get(f))
                   for f in trust_fields}}

    @property
    def warning(self) -> str | None:
        """What a person must read before the prediction (an input unlike the training images), or None."""
        return self.trust.warning if self.trust is not None else None

    @property
    def set_text(self) -> str:
        """The prediction set as text ('-' without calibration, 'empty' for an empty set)."""
        if self.trust is None or self.trust.prediction_set is None:
            return "-"
        return "{" + ", ".join(self.trust.prediction_set) + "}" if self.trust.prediction_set else "empty"


@dataclass
class ExplainedPrediction:
    """A prediction with its heatmap, overlays and the regions the heatmap points at."""

    prediction: Prediction
    method: str
    heatmap: np.ndarray
    heatmap_overlay: np.ndarray
    contour_overlay: np.ndarray
    regions: list[dict] = field(default_factory=list)
    area_fraction: float = 0.0

    explained_by: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {**self.prediction.to_dict(), "method": self.method, "map_size": list(self.heatmap.shape),
               "regions": self.regions, "area_fraction": self.area_fraction}
        if self.explained_by:
            out["explained_by"] = self.explained_by
        return out


class _SharedExclusiveLock:
    """Many predictions at once, or one explanation alone: CAM hooks live on the shared model, so a
    forward pass must never run through it while an explanation has them attached."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._writer = True  # new readers wait from now on
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Predictor:
    """Loads a bundle once; predicts and explains PIL images, files or uploaded bytes, in batches.

    Every bundle (one classifier or a tree of them) is served the same way; ``backend`` is ``auto``
    (ONNX Runtime on the CPU when installed, else PyTorch: :func:`oncolens.models.scoring.auto_backend`),
    ``torch`` or ``onnx`` (graphs from ``onnx_path`` when it holds this bundle's export, exported there
    when it does not, exported in memory when no path is given). Safe to share between threads.
    """

    def __init__(self, bundle: ModelBundle, backend: str = "auto", onnx_path: str | Path | None = None,
                 batch_size: int = SCORING_BATCH, num_workers: int | None = None, tta: str | None = None,
                 alpha: float | None = None, detector: str | None = None):
        self.bundle = bundle
        self.classes = list(bundle.classes)
        self.preprocessing = bundle.preprocessing
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.model = bundle.root.model
        self.runner: Backend = bundle.runner(backend, onnx_dir=onnx_path)
        self.backend = self.runner.name  # what "auto" chose
        self.tta, views = tta_views(bundle, tta)
        self.passes = len(views)  # forward passes per image (test-time augmentation)
        self._lock = _SharedExclusiveLock()
        self.trust = getattr(bundle, "trust", None)
        if alpha is not None and not 0 < alpha < 1:  # also NaN
            raise ConfigError(f"alpha (the prediction sets' error rate) must be between 0 and 1, got {alpha}")
        self.alpha = alpha if alpha is not None else (self.trust.default_alpha if self.trust else None)
        self.detector = detector
        self._card_warned = False
        if self.trust is not None:
            self.trust.check(detector)
        # penultimate features come from the same forward pass; only feature detectors need them
        self.features = self.trust is not None and self.trust.needs_features

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu", **kwargs) -> "Predictor":
        """A predictor for the bundle at ``path``, whatever its kind."""
        return cls(load_any_bundle(path, device=device), **kwargs)

    @property
    def hierarchical(self) -> bool:
        """True when each image passes more than one decision (a tree of classifiers)."""
        return self.bundle.is_tree

    @property
    def info(self) -> dict:
        calibration = self.trust.describe() if self.trust is not None else None
        return {**self.bundle.info(), "backend": self.backend, "tta": self.tta, "forward_passes_per_image": self.passes,
                "calibration": calibration, "model_card": self._model_card()}

    def _model_card(self) -> dict | None:
        """The bundle's model card; None when it has no folder, or (with one warning per predictor) when its
        card is damaged: a card documents a model and never stops it from scoring or serving."""
        from .models.card import card_or_none

        path = getattr(self.bundle, "path", None)
        if path is None:
            return None
        card, problem = card_or_none(path)
        if problem is not None and not getattr(self, "_card_warned", False):
            self._card_warned = True
            log.warning("%s; going on without a model card", problem)
        return card

    def score(self, inputs: Any) -> Scores:
        """The bundle's :class:`Scores` of images or image files (see ``ModelBundle.score``)."""
        with self._lock.shared():
            return self.bundle.score(inputs, backend=self.runner, batch_size=self.batch_size,
                                     num_workers=self.num_workers, tta=self.tta, features=self.features)

    def predict_proba(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(n_images, n_classes)`` probabilities (leaf path products for a tree of classifiers)."""
        return self.score(list(images)).probabilities

    def predictions(self, scores: Scores, sources: Sequence[str] | None = None,
                    alpha: float | None = None) -> list[Prediction]:
        """One :class:`Prediction` per row of ``scores``, with its prediction set (at ``alpha``, default the
        predictor's) and out-of-distribution verdict when the bundle is calibrated."""
        sources = list(sources) if sources is not None else scores.sources
        assessed = (self.trust.assess(scores, alpha=alpha or self.alpha, detector=self.detector)
                    if self.trust is not None and (scores.features or not self.features) else [None] * len(scores))
        return [Prediction(dict(zip(self.classes, map(float, scores.probabilities[i]))), source=sources[i],
                           decided=self.classes[int(scores.decided[i])], levels=self.bundle.level_records(scores, i),
                           trust=assessed[i])
                for i in range(len(scores))]

    def predict(self, images: Sequence[Image.Image], sources: Sequence[str] | None = None,
                alpha: float | None = None) -> list[Prediction]:
        images = list(images)
        return self.predictions(self.score(images), sources or [""] * len(images), alpha=alpha)

    def iter_predict_files(self, paths: Sequence[str | Path]) -> Iterator[tuple[list[Prediction], dict[str, str]]]:
        """``(predictions, unreadable)`` batch by batch, in input order (bounded memory)."""
        with self._lock.shared():
            for scores in self.bundle.iter_scores([str(p) for p in paths], backend=self.runner, tta=self.tta,
                                                  batch_size=self.batch_size, num_workers=self.num_workers,
                                                  features=self.features):
                yield self.predictions(scores), scores.unreadable

    #: the trust verdict's columns in a predictions file
    TRUST_FIELDS = ("prediction_set", "alpha", "out_of_distribution", "ood_detector", "ood_score", "ood_threshold")

    def row_fields(self, k: int) -> list[str]:
        """The columns of a predictions file with the top ``k`` classes (:meth:`Prediction.to_row`)."""
        levels = [lv["name"] for lv in self.info.get("levels", [])]
        return ["image", "label", "confidence", *(f"{lv}_{x}" for lv in levels for x in ("label", "confidence")),
                *(f"top{i + 1}_{x}" for i in range(k) for x in ("label", "probability")),
                *(self.TRUST_FIELDS if self.trust is not None else ())]

    def predict_to_file(self, paths: Sequence[str | Path], out: str | Path, top_k: int = 3, resume: bool = False,
                        dist: Distributed | None = None,
                        on_batch: Callable[[list[Prediction], dict[str, str]], None] | None = None) -> ScoringJob:
        """Predictions of ``paths`` streamed into ``out`` (``.csv`` or ``.jsonl``) through a
        :class:`~oncolens.models.scoring_job.ScoringJob`: written per batch, resumable, sharded across the
        ranks of ``dist`` and merged in input order. ``on_batch(predictions, unreadable)`` sees each batch."""
        k = min(top_k, len(self.classes))
        trust_fields = self.TRUST_FIELDS if self.trust is not None else ()
        job = ScoringJob(Path(out), key="image", fields=self.row_fields(k), resume=resume, dist=dist or Distributed())

        def rows_of(todo: list[int]):
            for batch, unreadable in self.iter_predict_files([paths[i] for i in todo]):
                if on_batch is not None:
                    on_batch(batch, unreadable)
                yield [p.to_row(k, trust_fields) for p in batch]

        job.score([str(p) for p in paths], rows_of)
        return job

    def predict_files(self, paths: Sequence[str | Path]) -> tuple[list[Prediction], dict[str, str]]:
        """Predictions for the readable files, and ``{path: reason}`` for the others."""
        predictions, failed = [], {}
        for batch, unreadable in self.iter_predict_files(paths):
            predictions += batch
            failed.update(unreadable)
        return predictions, failed

    @staticmethod
    def load_bytes(data: bytes, name: str = "upload", max_pixels: int = 40_000_000) -> Image.Image:
        """Decode uploaded bytes by content (never by name); raises UnreadableImage with the reason."""
        return decode_image(data, max_pixels=max_pixels, name=name).image

    def explain(self, image: Image.Image, method: str = "gradcam", target: str | int = "predicted",
                opacity: float = 0.45, threshold: str = "otsu", options: ExplainOptions | None = None,
                source: str = "", level: int | None = None, set_alpha: float | None = None, *,
                alpha: float | None = None) -> ExplainedPrediction:
        """Prediction, explanation heatmap, heatmap overlay and green contour/box overlay of one image.

        One classifier: the prediction comes from the explanation's own forward pass. A tree: the nodes
        are scored once (to route), and the map comes from the classifier at ``level`` on the routed
        path (default: the deepest); ``explained_by`` names it. ``opacity`` is the heatmap overlay's
        (``alpha`` its deprecated name: alpha is the prediction sets' error rate everywhere else);
        ``set_alpha`` the error rate of the prediction set (calibrated bundles).
        """
        from .explain import compose, explain  # imported when first asked: predicting alone does not need it

        opacity = renamed_keyword("Predictor.explain", "alpha", "opacity", alpha, opacity)

        scores = None
        with self._lock.exclusive():
            # a separate scoring pass: to route a tree, to average TTA views, or for the OOD detectors' features
            if not self.bundle.single_classifier or self.passes > 1 or self.trust is not None:
                scores = self.bundle.score([image], backend=self.runner, tta=self.tta, features=self.features)
            e = explain(self.bundle, [image], method=method, target=target, options=options, level=level,
                        routing=None if scores is None else scores.node_probabilities)[0]
        if scores is None:
            prediction = Prediction(dict(zip(self.classes, map(float, e.probabilities))), source=source)
        else:
            prediction = self.predictions(scores, [source], alpha=set_alpha)[0]
        composed = compose(image, e.heatmap, opacity, threshold)
        return ExplainedPrediction(prediction=prediction, method=method, heatmap=e.heatmap,
                                   heatmap_overlay=composed.heatmap_overlay, contour_overlay=composed.contour_overlay,
                                   regions=[r.to_dict() for r in composed.localisation.regions],
                                   area_fraction=composed.localisation.area_fraction,
                                   explained_by={**e.extra, "class": e.target_class} if e.extra else {})


def png_bytes(array: np.ndarray) -> bytes:
    """PNG encoding of an RGB uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
