"""Predictor: a bundle in; probabilities, an explanation map and contours/boxes out.

The apps (CLI, Streamlit, REST API) use only this. PyTorch and ONNX Runtime back-ends share the
interface; explanations always use the PyTorch model (they need its gradients and layers). A
hierarchical bundle is served by one predictor per tree node: its predictions carry every level.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import build_transforms, decode_image, read_image
from .explain import ExplainOptions, draw_regions, explain, localise, overlay_heatmap
from .models.bundle import Bundle
from .export import export_hierarchical_onnx, group_name
from .models.hierarchy import HierarchicalBundle, load_any_bundle

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
        return out


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


class Predictor:
    """Loads a bundle once; predicts and explains PIL images, files or uploaded bytes, in batches."""

    def __init__(self, bundle: Bundle | HierarchicalBundle, backend: str = "torch",
                 onnx_path: str | Path | None = None, batch_size: int = 32):
        self.bundle = bundle
        self.classes = list(bundle.classes)
        self.preprocessing = bundle.preprocessing
        self.transform = build_transforms(bundle.preprocessing, train=False)
        self.batch_size = batch_size
        self.backend = backend
        self._session = None
        self._group_sessions: dict[str, object] = {}
        if isinstance(bundle, HierarchicalBundle):
            self.model = bundle.root.bundle.model
            if backend == "onnx":  # one ONNX Runtime session per group of nodes sharing a backbone
                self._group_sessions = _hierarchical_sessions(bundle, onnx_path)
            elif backend != "torch":
                raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")
            return
        self.model = bundle.model.eval()
        if backend == "onnx":
            import onnxruntime as ort

            if onnx_path is None:
                from .export import export_onnx

                onnx_path = export_onnx(bundle, Path(bundle.path or ".") / "model.onnx")
            self._session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        elif backend != "torch":
            raise ValueError(f"backend must be 'torch' or 'onnx', got {backend!r}")

    @classmethod
    def from_bundle(cls, path: str | Path, device: str = "cpu", **kwargs) -> "Predictor":
        """A predictor for the flat or hierarchical bundle at ``path``."""
        return cls(load_any_bundle(path, device=device), **kwargs)

    @property
    def hierarchical(self) -> bool:
        return isinstance(self.bundle, HierarchicalBundle)

    @property
    def info(self) -> dict:
        out = {"kind": self.bundle.kind, "classes": self.classes, "input_size": self.preprocessing.size,
               "channels": self.preprocessing.channels, "model": self.model.config.get("name"), "backend": self.backend,
               "version": self.bundle.meta.get("oncolens_version") or __import__("oncolens").__version__}
        if isinstance(self.bundle, HierarchicalBundle):
            out["levels"] = [{"name": lv.name, "column": lv.column} for lv in self.bundle.levels]
            out["nodes"] = [{"node": node.key, "level": self.bundle.levels[node.level].name,
                             "classes": list(node.children), "model": node.bundle.model.config.get("name")}
                            for node in self.bundle.nodes()]
        return out

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.transform(image) for image in images])

    def predict_proba(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(n_images, n_classes)`` probabilities (leaf path products for a hierarchical bundle)."""
        if self.hierarchical:
            return self._hierarchical_scores(images)[0]
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = self.preprocess(images[start:start + self.batch_size])
            if self._session is not None:
                logits = torch.as_tensor(self._session.run(None, {"image": batch.numpy()})[0])
            else:
                with torch.inference_mode():
                    logits = self.model(batch.to(next(self.model.parameters()).device)).float().cpu()
            out.append(torch.softmax(logits, dim=1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)))

    def _run_onnx_group(self, group, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = self._group_sessions[group_name(group)].run(None, {"image": x.numpy()})
        return [torch.as_tensor(o) for o in outputs]

    def _hierarchical_scores(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        node_proba = self.bundle.node_probabilities(images, self.batch_size,
                                                    self._run_onnx_group if self._group_sessions else None)
        leaf, routed = self.bundle.combine(node_proba)
        return leaf, routed, node_proba

    def predict(self, images: Sequence[Image.Image], sources: Sequence[str] | None = None) -> list[Prediction]:
        sources = sources or [""] * len(images)
        if not self.hierarchical:
            proba = self.predict_proba(images)
            return [Prediction(dict(zip(self.classes, map(float, row))), source=src) for row, src in zip(proba, sources)]
        return self._hierarchical_predictions(*self._hierarchical_scores(images), sources)

    def _hierarchical_predictions(self, leaf: np.ndarray, routed: np.ndarray, node_proba: dict[str, np.ndarray],
                                  sources: Sequence[str]) -> list[Prediction]:
        out = []
        for i, (row, src) in enumerate(zip(leaf, sources)):
            levels = []
            for node, c in self.bundle.route(node_proba, i):
                names = list(node.children)
                levels.append({"level": self.bundle.levels[node.level].name, "node": node.key, "label": names[c],
                               "confidence": float(node_proba[node.key][i, c]),
                               "probabilities": dict(zip(names, map(float, node_proba[node.key][i])))})
            out.append(Prediction(dict(zip(self.classes, map(float, row))), source=src,
                                  decided=self.classes[int(routed[i])], levels=levels))
        return out

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

    @staticmethod
    def load_bytes(data: bytes, name: str = "upload", max_pixels: int = 40_000_000) -> Image.Image:
        """Decode uploaded bytes by content (never by name); raises UnreadableImage with the reason."""
        return decode_image(data, max_pixels=max_pixels, name=name).image

    def explain(self, image: Image.Image, method: str = "gradcam", target: str | int = "predicted",
                alpha: float = 0.45, threshold: str = "otsu", options: ExplainOptions | None = None,
                source: str = "", level: int | None = None) -> ExplainedPrediction:
        """Prediction, explanation heatmap, heatmap overlay and green contour/box overlay of one image.

        For a hierarchical bundle the map comes from the classifier at ``level`` on the routed path
        (default: the deepest); ``explained_by`` names it.
        """
        routing = None
        if self.hierarchical:  # score the nodes once: for the prediction and to route the explanation
            leaf, routed, routing = self._hierarchical_scores([image])
            prediction = self._hierarchical_predictions(leaf, routed, routing, [source])[0]
        else:
            prediction = self.predict([image], [source])[0]
        e = explain(self.bundle, [image], method=method, target=target, options=options, level=level,
                    routing=routing)[0]
        where = localise(e.heatmap, threshold)
        return ExplainedPrediction(prediction=prediction, method=method, heatmap=e.heatmap,
                                   heatmap_overlay=overlay_heatmap(image, e.heatmap, alpha),
                                   contour_overlay=draw_regions(image, where.regions, e.heatmap.shape),
                                   regions=[r.to_dict() for r in where.regions], area_fraction=where.area_fraction,
                                   explained_by={**e.extra, "class": e.target_class} if e.extra else {})


def _hierarchical_sessions(bundle: HierarchicalBundle, onnx_dir: str | Path | None) -> dict[str, object]:
    """An ONNX Runtime session per backbone group, from ``onnx_dir`` (as `oncolens export` writes it) or
    exported afresh next to the bundle when the folder does not hold this bundle's graphs."""
    import onnxruntime as ort

    folder = Path(onnx_dir) if onnx_dir else Path(bundle.path or ".") / "onnx"
    groups = {group_name(g): [n.key for n in g] for g in bundle.shared_backbones()}

    def matches(name: str, nodes: list[str]) -> bool:
        sidecar = folder / f"{name}.json"
        return (folder / f"{name}.onnx").exists() and sidecar.exists() and json.loads(sidecar.read_text())["nodes"] == nodes

    if onnx_dir is None or not all(matches(name, nodes) for name, nodes in groups.items()):
        export_hierarchical_onnx(bundle, folder)
    return {name: ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])
            for name in groups}


def png_bytes(array: np.ndarray) -> bytes:
    """PNG encoding of an RGB uint8 array."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
