"""The one scoring loop: images, image files or manifest rows in; per-node probabilities, the routed
decision, leaf probabilities and (on request) penultimate features out.

Every caller (predict, evaluate, explain-eval, panels, studies, the Predictor, the API, the app, the
feature cache) goes through :func:`forward_batches`: a DataLoader decodes and resizes off the main
thread when workers are used, batches run channels-last where the registry says so, and results are
yielded batch by batch, so memory stays bounded whatever the number of inputs. Unreadable inputs are
reported with their reason, never fatal.

Back-ends run a group of nodes sharing one backbone (see ``ModelBundle.shared_backbones``): PyTorch,
or ONNX Runtime on graphs exported by :mod:`oncolens.models.onnx` (from a folder the caller names, or
exported in memory: loading never writes files). The default, ``auto``, is ONNX Runtime on the CPU when
it is installed (see :func:`auto_backend`).
"""

from __future__ import annotations

import sys

import gc
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..data.dataset import Unreadable
from ..data.imageio import DEFAULT_MAX_PIXELS, LazyImage, UnreadableImage, read_image
from ..data.perturb import get_perturbation
from ..data.transforms import build_transforms
from ..errors import ConfigError, OncolensError
from ..registry import Registry
from .bundle import HierarchyNode, ModelBundle
from .factory import detector_dim, pool_features
from .fuse import inference_backbone, module_version
from .registry import prefers_channels_last
from .trust import softmax

log = logging.getLogger(__name__)

#: images per forward pass when scoring: the peak memory of the activations grows with the batch, the speed
#: hardly does on a CPU (bench_memory prints predict at 8 and at 32: ~250 MB less peak for ~10% more time)
SCORING_BATCH = 8

__all__ = ["Scores", "Backend", "TorchBackend", "OnnxBackend", "make_backend", "register_backend", "score",
           "auto_backend", "iter_scores", "forward_batches", "make_loader", "Unreadable", "default_workers",
           "TTA_VIEWS", "tta_views", "ScoringInputs", "image_inputs", "calibrated"]


def default_workers(n_batches: int) -> int:
    """DataLoader workers for ``n_batches`` of file inputs: none for a single batch (a worker costs more
    than it saves), else one per spare core (at least one, at most four)."""
    if n_batches <= 1:
        return 0
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def collate_items(batch: list) -> tuple[tuple[torch.Tensor, ...] | None, list[int], list[Unreadable]]:
    """Stack ``((tensor, ...), index)`` items; set :class:`Unreadable` items aside."""
    failed = [item for item in batch if isinstance(item, Unreadable)]
    ok = [item for item in batch if not isinstance(item, Unreadable)]
    if not ok:
        return None, [], failed
    width = len(ok[0][0])
    return tuple(torch.stack([item[0][k] for item in ok]) for k in range(width)), [int(i[1]) for i in ok], failed


def make_loader(dataset: Dataset, *, num_workers: int = 0, **options: Any) -> DataLoader:
    """A DataLoader whose worker processes are safe to fork here (every loader with workers is made so)."""
    if num_workers:
        # a forked worker must not free objects of this process: an ONNX Runtime session destroyed in the
        # child (unreachable here, collected there) waits forever on its thread pool's locks
        gc.collect()
    return DataLoader(dataset, num_workers=num_workers, **options)


def forward_batches(dataset: Dataset, forward: Callable[[tuple[torch.Tensor, ...]], Any], *, batch_size: int = 32,
                    num_workers: int = 0) -> Iterator[tuple[Any, list[int], list[Unreadable]]]:
    """``(forward(tensors), indices, unreadable)`` per batch of ``dataset``, whose items are
    ``((tensor, ...), index)`` or :class:`Unreadable`; ``forward`` runs under inference mode and is
    not called for a batch with nothing readable (``None`` is yielded instead)."""
    loader = make_loader(dataset, num_workers=num_workers, batch_size=batch_size, shuffle=False,
                         collate_fn=collate_items, prefetch_factor=4 if num_workers else None)
    for tensors, indices, failed in loader:
        with torch.inference_mode():
            out = forward(tensors) if indices else None
        yield out, indices, failed


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """``x`` on ``device``, in channels-last memory format when asked."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# --- back-ends ---------------------------------------------------------------------------------
class Backend(Protocol):
    """Runs one backbone group: ``(features, [logits per node])`` for a preprocessed batch."""

    name: str

    def forward(self, group: int, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]: ...


class TorchBackend:
    """The bundle's own PyTorch modules (on the device they were loaded on)."""

    name = "torch"

    def __init__(self, bundle: ModelBundle, fused: bool = True):
        """``fused``: run a copy with batch norm folded into the convolutions (scoring; no gradients reach
        the bundle's parameters through it); False runs the bundle's own modules."""
        self.fused = fused
        self.groups = bundle.shared_backbones()
        self.devices = [next(g[0].model.parameters()).device for g in self.groups]
        self.channels_last = [prefers_channels_last(g[0].model.name, d) for g, d in zip(self.groups, self.devices)]

    def forward(self, group: int, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        nodes = self.groups[group]
        model = nodes[0].model
        # batch norm folded into the convolutions (a cached copy; see .fuse), or the model's own modules
        backbone = inference_backbone(model.backbone, model.preprocessing.size, model.preprocessing.channels,
                                      self.devices[group], self.channels_last[group]) if self.fused else model.backbone
        features = backbone(to_device(x, self.devices[group], self.channels_last[group]))
        return features.float().cpu(), [node.model.head(features).float().cpu() for node in nodes]


class OnnxBackend:
    """ONNX Runtime sessions, one per backbone group (graphs from :func:`oncolens.models.onnx.export_onnx`).

    ``folder``: graphs exported there before are used when they belong to this bundle, otherwise
    they are exported there; without a folder, graphs are exported in memory and nothing is written.
    ``threads``: intra-op threads (default: PyTorch's, so a rank of a distributed run keeps its share).
    """

    name = "onnx"

    def __init__(self, bundle: ModelBundle, folder: str | Path | None = None, threads: int | None = None):
        import onnxruntime as ort

        from .onnx import onnx_graphs

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # no spinning between runs: the cores are shared with the image-decoding workers
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # no reference back to the bundle: a bundle and its sessions are freed without the cyclic collector
        self.sessions = [ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])
                         for graph in onnx_graphs(bundle, folder)]

    def forward(self, group: int, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outputs = self.sessions[group].run(None, {"image": x.numpy()})
        return torch.as_tensor(outputs[0]), [torch.as_tensor(o) for o in outputs[1:]]


def auto_backend(bundle: ModelBundle, onnx_dir: str | Path | None = None) -> Backend:
    """The default back-end: ONNX Runtime when it is installed and every backbone is on the CPU (faster
    than PyTorch eager on CPUs: ``benchmarks/bench_inference.py`` prints both; probabilities agree within
    1e-4, tested), else PyTorch; also PyTorch when a graph cannot be exported (an architecture the
    exporter does not handle)."""
    on_cpu = all(next(g[0].model.parameters()).device.type == "cpu" for g in bundle.shared_backbones())
    if on_cpu and importlib.util.find_spec("onnxruntime") is not None:
        try:
            return OnnxBackend(bundle, onnx_dir)
        except Exception as exc:  # noqa: BLE001 - any exporter failure means: score with PyTorch instead
            log.warning("ONNX export of %s failed (%s: %s); scoring with PyTorch", bundle.path, type(exc).__name__,
                        str(exc).splitlines()[0] if str(exc) else "")
    return TorchBackend(bundle)


_BACKENDS: Registry[Callable[..., Backend]] = Registry("scoring back-end")


def register_backend(name: str, factory: Callable[..., Backend], override: bool = False) -> None:
    """Make ``factory(bundle, **options)`` available as ``backend=name``."""
    _BACKENDS.register(name, factory, override)


register_backend("auto", lambda bundle, onnx_dir=None, **_: auto_backend(bundle, onnx_dir))
register_backend("torch", lambda bundle, **_: TorchBackend(bundle))
register_backend("onnx", lambda bundle, onnx_dir=None, **_: OnnxBackend(bundle, onnx_dir))


def _bag_head_backend(bundle: ModelBundle, **_: Any) -> Backend:
    from .mil import BagHeadBackend

    return BagHeadBackend(bundle)


register_backend("bag-head", _bag_head_backend)


def make_backend(bundle: ModelBundle, backend: "str | Backend" = "auto", **options: Any) -> Backend:
    """A back-end object for ``bundle`` (an object passes through unchanged). Made once per bundle, name
    and options while the weights stay the same: exporting a graph costs a fraction of a second."""
    if not isinstance(backend, str):
        return backend
    if backend not in _BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
    factory = _BACKENDS.get(backend)
    key = (backend, tuple(sorted((k, str(v)) for k, v in options.items())))
    version = tuple((module_version(node.model), str(next(node.model.parameters()).device))
                    for group in bundle.shared_backbones() for node in group)
    made = bundle.__dict__.setdefault("_oncolens_backends", {})
    if key not in made or made[key][0] != version:
        made[key] = (version, factory(bundle, **options))
    return made[key][1]


# --- inputs ------------------------------------------------------------------------------------
class _Inputs(Dataset):
    """Images or image files, each decoded once and preprocessed for every distinct preprocessing."""

    def __init__(self, items: Sequence[Any], transforms: Sequence[Callable], max_pixels: int, min_size: int,
                 perturb: Callable[[Image.Image], Image.Image] | None = None):
        self.items = items
        self.transforms = list(transforms)
        self.max_pixels = max_pixels
        self.min_size = min_size  # the largest model input side: JPEGs may be decoded at a reduced scale
        self.perturb = perturb

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        if isinstance(item, Image.Image):
            image = item
        else:
            try:
                image = (item.load() if isinstance(item, LazyImage)
                         else read_image(item, max_pixels=self.max_pixels, min_size=self.min_size).image)
            except UnreadableImage as exc:
                return Unreadable(index, exc.reason)
        try:
            if self.perturb is not None:
                image = self.perturb(image)
            return tuple(t(image) for t in self.transforms), index
        except OncolensError:  # a user error (e.g. a bad option of a transform) is said as it is, not as a file's
            raise
        except (OSError, ValueError) as exc:  # a decoder that gave up part-way through the pixels
            return Unreadable(index, f"cannot decode: {exc}")


def _items(inputs: Any) -> tuple[list[Any], list[str]]:
    pandas = sys.modules.get("pandas")  # a DataFrame exists only once pandas is imported
    if pandas is not None and isinstance(inputs, pandas.DataFrame):
        paths = inputs["path"].astype(str).tolist()
        return paths, paths
    if isinstance(inputs, (Image.Image, str, Path)):
        inputs = [inputs]
    items = list(inputs)
    for item in items:
        if not isinstance(item, (Image.Image, str, Path, LazyImage)):
            raise TypeError(f"cannot score an object of type {type(item).__name__}")
    return items, ["" if isinstance(i, Image.Image) else i.source if isinstance(i, LazyImage) else str(i)
                   for i in items]


# --- scores ------------------------------------------------------------------------------------
@dataclass
class Scores:
    """What a bundle says about a set of inputs (rows in input order, unreadable inputs left out)."""

    classes: list[str]
    probabilities: np.ndarray  # (n, leaf classes): path products for a tree
    decided: np.ndarray  # (n,) routed leaf index (the decision; argmax of probabilities for one node)
    node_probabilities: dict[str, np.ndarray]  # node key -> (n, node classes)
    node_logits: dict[str, np.ndarray]
    positions: np.ndarray  # index of each row among the inputs
    sources: list[str]
    unreadable: dict[str, str] = field(default_factory=dict)  # source -> reason
    # node key -> (n, d) penultimate features, pooled to at most MAX_DETECTOR_DIM (what OOD detectors read)
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def labels(self) -> list[str]:
        """The decided leaf class of each row."""
        return [self.classes[i] for i in self.decided]

    @property
    def confidence(self) -> np.ndarray:
        """The probability of each row's decided class."""
        return self.probabilities[np.arange(len(self)), self.decided] if len(self) else np.zeros(0)

    @classmethod
    def concat(cls, parts: Sequence["Scores"], classes: Sequence[str]) -> "Scores":
        parts = list(parts)
        filled = [p for p in parts if len(p)]  # a batch of unreadable files only has no node keys
        keys = list(filled[0].node_probabilities) if filled else []
        feature_keys = list(filled[0].features) if filled else []
        width = len(classes)

        def cat(arrays: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
            arrays = [a for a in arrays if len(a)]
            return np.concatenate(arrays) if arrays else np.zeros(shape)

        return cls(
            classes=list(classes),
            probabilities=cat([p.probabilities for p in parts], (0, width)),
            decided=cat([p.decided for p in parts], (0,)).astype(int),
            node_probabilities={k: cat([p.node_probabilities[k] for p in filled], (0, 0)) for k in keys},
            node_logits={k: cat([p.node_logits[k] for p in filled], (0, 0)) for k in keys},
            positions=cat([p.positions for p in parts], (0,)).astype(int),
            sources=[s for p in parts for s in p.sources],
            unreadable={k: v for p in parts for k, v in p.unreadable.items()},
            features={k: cat([p.features[k] for p in filled], (0, 0)) for k in feature_keys},
        )


#: test-time augmentation: the views of each image whose class probabilities are averaged
TTA_VIEWS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], ...]] = {
    "none": (lambda x: x,),
    "flip": (lambda x: x, lambda x: torch.flip(x, dims=(3,))),
    # the dihedral group: 4 rotations, with and without a flip (orientation carries no meaning in histology)
    "dihedral": tuple((lambda x, k=k, f=f: torch.rot90(torch.flip(x, dims=(3,)) if f else x, k, dims=(2, 3)))
                      for f in (False, True) for k in range(4)),
}


def tta_views(bundle: ModelBundle, tta: str | None = None) -> tuple[str, tuple]:
    """The test-time augmentation to use (``tta``, else the bundle's setting, else none) and its views."""
    name = tta or bundle.meta.get("tta") or "none"
    if name not in TTA_VIEWS:
        raise ConfigError(f"test-time augmentation must be one of {', '.join(TTA_VIEWS)}, got {name!r}")
    return name, TTA_VIEWS[name]


@dataclass
class ScoringInputs:
    """What a bundle gives the scoring loop for its inputs (:meth:`ModelBundle.scoring_inputs`): how each input
    becomes tensors, how many go through at once, which nodes run together and how wide the features are that
    the OOD detectors read. Everything else (back-end, views, temperature, routing, rows) is the loop's."""

    dataset: Dataset  # items ((tensor, ...), index), or Unreadable(index, reason)
    batch_size: int
    num_workers: int
    groups: list[list[HierarchyNode]]  # nodes run by one back-end call (``Backend.forward(g, x)``)
    input_of: list[int]  # group -> the item's tensor it reads
    feature_width: Callable[[HierarchyNode], int]  # node -> width of the features OOD detectors read (asked only
    # when features are)
    views: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = TTA_VIEWS["none"]


def image_inputs(bundle: ModelBundle, items: Sequence[Any], *, batch_size: int | None = None,
                 num_workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, tta: str | None = None,
                 perturb: str | None = None) -> ScoringInputs:
    """Images or image files decoded once and preprocessed for every distinct preprocessing of the bundle's
    backbone groups, ``batch_size`` (default :data:`SCORING_BATCH`) per batch; ``num_workers=None`` picks
    workers for file inputs from the core count. ``tta`` (default: the bundle's setting) gives the views;
    ``perturb`` names a robustness perturbation (:mod:`oncolens.data.perturb`) applied to every decoded
    image first."""
    batch_size = batch_size or SCORING_BATCH
    perturbation = get_perturbation(perturb)
    _, views = tta_views(bundle, tta)
    groups: list[list[HierarchyNode]] = bundle.shared_backbones()
    distinct: list = []
    for group in groups:
        pre = group[0].bundle.preprocessing
        if pre not in distinct:
            distinct.append(pre)
    # a perturbation acts on the image as stored: no reduced-scale JPEG decoding before it
    dataset = _Inputs(items, [build_transforms(pre, train=False) for pre in distinct], max_pixels,
                      min_size=max(pre.size for pre in distinct) if perturbation is None else None,
                      perturb=perturbation)
    if num_workers is None:
        decoded = all(isinstance(item, Image.Image) for item in items)
        num_workers = 0 if decoded else default_workers(-(-len(items) // batch_size))
    return ScoringInputs(dataset=dataset, batch_size=batch_size, num_workers=num_workers, groups=groups,
                         input_of=[distinct.index(g[0].bundle.preprocessing) for g in groups],
                         feature_width=lambda node: detector_dim(node.model.backbone),
                         views=views)


def calibrated(bundle: ModelBundle, node_logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each node's probabilities from its ``(n, classes)`` logits: temperature-scaled when the bundle is
    calibrated (its trust layer's temperature per node), else the plain softmax."""
    temperatures = bundle.trust.temperatures if getattr(bundle, "trust", None) is not None else {}
    return {k: softmax(v / temperatures.get(k, 1.0)) for k, v in node_logits.items()}


def iter_scores(bundle: ModelBundle, inputs: Any, backend: "str | Backend" = "auto", *,
                batch_size: int | None = None, num_workers: int | None = None, features: bool = False,
                onnx_dir: str | Path | None = None, **options: Any) -> Iterator[Scores]:
    """:class:`Scores` of ``inputs`` one batch at a time (PIL images, file paths, or a manifest
    DataFrame's ``path`` column), whatever the bundle: what an input is to it and how its nodes run are the
    bundle's (:meth:`ModelBundle.scoring_inputs`, :meth:`ModelBundle.runner`), the rest is done here once.
    ``options`` go to the bundle's inputs: for images ``max_pixels``, ``tta`` (default: the bundle's
    setting; averages each classifier's probabilities and features over flipped/rotated views, one forward
    pass per view) and ``perturb`` (see :func:`image_inputs`); for a bag classifier, how its bags are made."""
    runner = bundle.runner(backend, onnx_dir=onnx_dir)
    items, sources = _items(inputs)
    plan = bundle.scoring_inputs(items, batch_size=batch_size, num_workers=num_workers, **options)
    groups, views = plan.groups, plan.views

    def forward(tensors: tuple[torch.Tensor, ...]):
        logits, feats = {}, {}
        for g, group in enumerate(groups):
            outputs = [runner.forward(g, view(tensors[plan.input_of[g]]).contiguous()) for view in views]
            for i, node in enumerate(group):
                if len(outputs) == 1:
                    logits[node.key] = outputs[0][1][i].numpy()
                else:  # log of the mean probability: its softmax is the average over the views
                    views_logits = [out[1][i].numpy().astype(np.float64) for out in outputs]
                    mean = np.mean([softmax(v) for v in views_logits], axis=0)
                    # shifted by the views' mean log-sum-exp (a per-image constant: probabilities unchanged), so
                    # logit-based detectors (energy) see the views' scale, not log-probabilities summing to one
                    scale = np.mean([np.logaddexp.reduce(v, axis=1) for v in views_logits], axis=0)[:, None]
                    logits[node.key] = (np.log(np.clip(mean, 1e-12, None)) + scale).astype(np.float32)
                if features:  # pooled to the width the OOD detectors read (bounded whatever the backbone)
                    feats[node.key] = pool_features(np.mean([out[0].numpy() for out in outputs], axis=0),
                                                    plan.feature_width(node))
        return logits, feats

    for out, indices, failed in forward_batches(plan.dataset, forward, batch_size=plan.batch_size,
                                                num_workers=plan.num_workers):
        unreadable = {sources[f.index] or f"input {f.index}": f.reason for f in failed}
        if out is None:
            empty = Scores.concat([], bundle.classes)
            empty.unreadable = unreadable
            yield empty
            continue
        logits, feats = out
        # calibrated probabilities (temperature scaling, when the bundle has it); node_logits stay raw
        node_proba = calibrated(bundle, logits)
        leaf, routed = bundle.combine(node_proba)
        yield Scores(classes=list(bundle.classes), probabilities=leaf, decided=routed, node_probabilities=node_proba,
                     node_logits=logits, positions=np.asarray(indices, dtype=int),
                     sources=[sources[i] for i in indices], unreadable=unreadable, features=feats)


def score(bundle: ModelBundle, inputs: Any, backend: "str | Backend" = "auto", **options: Any) -> Scores:
    """All :class:`Scores` of ``inputs`` at once (see :func:`iter_scores` for the options)."""
    return Scores.concat(list(iter_scores(bundle, inputs, backend=backend, **options)), bundle.classes)
