"""One verb across explanation methods: ``explain(model, images, method, target)``.

A method is a small class registered by name (as pytorch-grad-cam subclasses one base CAM); adding
one is a subclass with ``attribute()`` and ``@register_method``. Each method explains the models of one
task (``images``: a backbone and a head; ``bags``: a bag classifier, explained by its attention); a bundle
says its task, and a method of another task is refused naming the ones that fit.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data import Preprocessing, build_transforms, read_image
from ..errors import ConfigError, DataError
from ..registry import Registry
from ..models.bundle import HierarchyNode, ModelBundle, load_any_bundle
from ..models.factory import OncoClassifier
from ..models.registry import prefers_channels_last
from ..models.scoring import to_device
from .layers import find_target_layer, get_layer

__all__ = ["ExplainOptions", "Explanation", "Method", "register_method", "get_method", "list_methods", "explain",
           "to_relevance", "target_indices"]


@dataclass(frozen=True)
class ExplainOptions:
    """Speed and quality knobs, named the same for every method (as in captum)."""

    internal_batch_size: int = 32  # perturbed inputs evaluated per forward pass
    n_samples: int = 200  # LIME / KernelSHAP samples
    n_segments: int = 50  # SLIC superpixels for LIME / KernelSHAP
    ig_steps: int = 32  # Integrated Gradients steps
    occlusion_window: float = 0.125  # occlusion patch side, as a fraction of the image side
    occlusion_stride: float = 0.0625
    seed: int = 0


@dataclass
class Explanation:
    """One image's explanation: the raw attribution and a [0, 1] relevance heatmap at model input size."""

    method: str
    target_index: int
    target_class: str
    target_probability: float
    predicted_class: str
    predicted_probability: float
    raw: np.ndarray
    heatmap: np.ndarray
    layer: str | None = None
    seconds: float = 0.0
    source: str = ""
    extra: dict = field(default_factory=dict)
    probabilities: np.ndarray | None = None  # the explained classifier's class probabilities


class Method:
    """Base class: ``attribute`` returns raw maps ``(B, H, W)`` for inputs ``(B, C, H, W)``."""

    name: str = ""
    #: "cam" maps are already >= 0; "signed" keep their positive part; "magnitude" are >= 0
    kind: str = "signed"
    needs_layer: bool = False
    #: True when ``attribute`` accepts ``targets=None`` (explain the predicted class) and returns logits
    handles_predicted: bool = False
    #: the task of the models it explains (a bundle's ``task``): "images" or "bags"
    task: str = "images"

    def attribute(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor | None, *,
                  layer: nn.Module | None, preprocessing: Preprocessing,
                  options: ExplainOptions) -> np.ndarray | tuple[np.ndarray, torch.Tensor]:
        """Raw maps ``(B, H, W)``, or ``(maps, logits)`` when the method ran the forward pass itself."""
        raise NotImplementedError

    def explain(self, model_or_bundle, images: Sequence | torch.Tensor, target: str | int, target_layer: str | None,
                batch_size: int, options: ExplainOptions, classes: Sequence[str] | None, level: int | None,
                routing: Mapping[str, np.ndarray] | None) -> list[Explanation]:
        """One explanation per image (see :func:`explain`): an image model's maps from :meth:`attribute`."""
        return _explain_images(self, model_or_bundle, images, target, target_layer, batch_size, options, classes,
                               level, routing)


_METHODS: Registry[Method] = Registry("explanation method")


def register_method(name: str, override: bool = False):
    """Class decorator: make a :class:`Method` subclass available as ``name``."""

    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        _METHODS.register(name, cls(), override)
        return cls

    return decorator


def get_method(name: str) -> Method:
    return _METHODS.get(name)


#: a task's models in words (one, several), for messages
_MODELS_OF = {"images": ("an image model", "image models"), "bags": ("a bag classifier", "bag classifiers")}


def task_of(model_or_bundle) -> str:
    """The task of a bundle (its ``task``); a bare model is an image model."""
    return getattr(model_or_bundle, "task", "images")


def list_methods(task: "str | ModelBundle | None" = "images") -> list[str]:
    """The methods that explain models of ``task`` (a task name, or a bundle: its task; default: image
    models), or every method (None)."""
    wanted = task if task is None or isinstance(task, str) else task_of(task)
    return [name for name in _METHODS.names() if wanted is None or _METHODS.get(name).task == wanted]


def target_indices(target: str | int, classes: Sequence[str], predicted: np.ndarray) -> np.ndarray:
    """The class index to explain per image: ``predicted``, a class index or a class name."""
    classes = list(classes)
    if target == "predicted":
        targets = np.asarray(predicted)
    elif isinstance(target, int) or (isinstance(target, str) and target.isdigit() and target not in classes):
        targets = np.full(len(predicted), int(target))
    elif target in classes:
        targets = np.full(len(predicted), classes.index(target))
    else:
        raise DataError(f"target must be 'predicted', a class index or one of {classes}, got {target!r}")
    if (targets >= len(classes)).any() or (targets < 0).any():
        raise DataError(f"target index out of range for {len(classes)} classes")
    return targets


def to_relevance(raw: np.ndarray, kind: str) -> np.ndarray:
    """Map raw attributions ``(B, H, W)`` to [0, 1] evidence for the target class, per image."""
    raw = np.nan_to_num(np.asarray(raw, dtype=np.float32))
    relevance = np.abs(raw) if kind == "magnitude" else np.maximum(raw, 0)
    peak = relevance.reshape(len(relevance), -1).max(1).reshape(-1, 1, 1)
    return np.divide(relevance, peak, out=np.zeros_like(relevance), where=peak > 0)


def _as_model(model_or_bundle) -> tuple[OncoClassifier, list[str]]:
    if isinstance(model_or_bundle, ModelBundle):
        return model_or_bundle.root.model, list(model_or_bundle.root.children)
    if isinstance(model_or_bundle, OncoClassifier):
        return model_or_bundle, [str(i) for i in range(model_or_bundle.num_classes)]
    raise TypeError("explain() takes a bundle path, a bundle or an OncoClassifier")


def _as_batch(images, preprocessing: Preprocessing) -> tuple[torch.Tensor, list[str]]:
    if isinstance(images, torch.Tensor):
        return (images if images.ndim == 4 else images[None]), [""] * (len(images) if images.ndim == 4 else 1)
    transform = build_transforms(preprocessing, train=False)
    tensors, sources = [], []
    for item in images:
        if isinstance(item, (str, Path)):
            tensors.append(transform(read_image(item).image))
            sources.append(str(item))
        elif isinstance(item, Image.Image):
            tensors.append(transform(item))
            sources.append("")
        else:
            raise TypeError(f"cannot explain an object of type {type(item).__name__}")
    return torch.stack(tensors), sources


def explain(
    model_or_bundle, images: Sequence | torch.Tensor, method: str = "gradcam", target: str | int = "predicted",
    target_layer: str | None = None, batch_size: int = 16, options: ExplainOptions | None = None,
    classes: Sequence[str] | None = None, level: int | None = None, routing: Mapping[str, np.ndarray] | None = None,
) -> list[Explanation]:
    """Explain each image's ``target`` class (``predicted``, a class name or an index) with ``method``.

    A hierarchical bundle explains each image with the classifier that decided it at ``level`` (default:
    the deepest one on its routed path), or, for a named target class, with the classifier that decides
    that class; ``Explanation.extra`` says which node and level. ``routing`` passes the nodes'
    probabilities of these images when they are already known (a Predictor has them), so they are not
    computed again.

    >>> explain("runs/demo/bundle", ["scan.png"], method="gradcam")[0].heatmap.shape  # doctest: +SKIP
    (224, 224)
    """
    if len(images) == 0:
        return []
    if isinstance(model_or_bundle, (str, Path)):
        model_or_bundle = load_any_bundle(model_or_bundle)
    if level is not None:  # refused as the API refuses it (422), never clamped to the deepest level
        depth = len(getattr(model_or_bundle, "levels", None) or [None])
        if not 0 <= level < depth:
            raise ConfigError(f"level must be between 0 and {depth - 1} for this bundle ({depth} level(s)), "
                              f"got {level}")
    chosen = get_method(method)
    task = task_of(model_or_bundle)
    if chosen.task != task:
        raise ConfigError(f"{method!r} explains {_MODELS_OF.get(chosen.task, (chosen.task,) * 2)[1]}, and this is "
                          f"{_MODELS_OF.get(task, (task,) * 2)[0]}: use one of {', '.join(list_methods(task)) or 'none'}")
    return chosen.explain(model_or_bundle, images, target, target_layer, batch_size, options or ExplainOptions(),
                          classes, level, routing)


def _explain_images(chosen: Method, model_or_bundle, images, target: str | int, target_layer: str | None,
                    batch_size: int, options: ExplainOptions, classes: Sequence[str] | None, level: int | None,
                    routing: Mapping[str, np.ndarray] | None) -> list[Explanation]:
    """An image model's explanations by ``chosen``'s maps, batch by batch."""
    method = chosen.name
    if isinstance(model_or_bundle, ModelBundle) and not model_or_bundle.single_classifier:
        # a tree of classifiers: explain each image with the one that decides it
        return _explain_tree(model_or_bundle, images, method, target, target_layer, batch_size, options, level,
                             routing)
    model, bundle_classes = _as_model(model_or_bundle)
    classes = list(classes or bundle_classes)
    options = options or ExplainOptions()
    model.eval()
    device = next(model.parameters()).device
    channels_last = prefers_channels_last(model.name, device)
    x_all, sources = _as_batch(images, model.preprocessing)
    layer_name, layer = None, None
    if chosen.needs_layer:
        if target_layer:
            layer_name, layer = target_layer, get_layer(model, target_layer)
        else:  # an ensemble: every member's layer (the CAM library averages the maps over target layers)
            found = [find_target_layer(part, model.preprocessing.size, model.preprocessing.channels)
                     for part in getattr(model, "cam_parts", lambda: [model])()]
            layer_name = ",".join(name for name, _ in found)
            layer = [module for _, module in found] if len(found) > 1 else found[0][1]
    results: list[Explanation] = []
    for start in range(0, len(x_all), batch_size):
        x = to_device(x_all[start:start + batch_size], device, channels_last)
        started = time.perf_counter()
        if target == "predicted" and chosen.handles_predicted:
            # the method's own forward pass gives the prediction: no extra pass
            with torch.enable_grad():
                raw, logits = chosen.attribute(model, x, None, layer=layer, preprocessing=model.preprocessing,
                                               options=options)
            proba = torch.softmax(logits.float(), 1).cpu().numpy()
            results.extend(_explanations(method, chosen, raw, proba, proba.argmax(1), classes, layer_name,
                                         (time.perf_counter() - started) / len(x), sources[start:start + len(x)]))
            continue
        with torch.no_grad():
            proba = torch.softmax(model(x).float(), 1).cpu().numpy()
        targets = target_indices(target, classes, proba.argmax(1))
        with torch.enable_grad():
            raw = chosen.attribute(model, x, torch.as_tensor(targets, device=device), layer=layer,
                                   preprocessing=model.preprocessing, options=options)
        if isinstance(raw, tuple):
            raw = raw[0]
        results.extend(_explanations(method, chosen, raw, proba, targets, classes, layer_name,
                                     (time.perf_counter() - started) / len(x), sources[start:start + len(x)]))
    return results


def _explanations(method: str, chosen: Method, raw, proba: np.ndarray, targets, classes: list[str],
                  layer_name: str | None, seconds: float, sources: list[str]) -> list[Explanation]:
    raw = np.asarray(raw, dtype=np.float32)
    heatmaps = to_relevance(raw, chosen.kind)
    predicted = proba.argmax(1)
    out = []
    for i in range(len(raw)):
        t, p = int(targets[i]), int(predicted[i])
        out.append(Explanation(method=method, target_index=t, target_class=classes[t],
                               target_probability=float(proba[i, t]), predicted_class=classes[p],
                               predicted_probability=float(proba[i, p]), raw=raw[i], heatmap=heatmaps[i],
                               layer=layer_name, seconds=seconds, source=sources[i], probabilities=proba[i]))
    return out


def _explain_tree(bundle: ModelBundle, images, method: str, target: str | int, target_layer, batch_size: int,
                  options, level: int | None, routing) -> list[Explanation]:
    if isinstance(images, torch.Tensor):
        raise TypeError("a tree of classifiers explains images or image files, not tensors (its nodes may "
                        "preprocess differently)")
    pil, sources = [], []
    for item in images:
        pil.append(read_image(item).image if isinstance(item, (str, Path)) else item)
        sources.append(str(item) if isinstance(item, (str, Path)) else "")
    chosen: list[tuple[HierarchyNode, int]] = []
    if target == "predicted":
        node_proba = routing if routing is not None else bundle.score(pil, batch_size=batch_size).node_probabilities
        chosen = [bundle.decider(node_proba, i, level) for i in range(len(pil))]
    else:
        found = bundle.node_for_class(str(target))
        if found is None:
            raise DataError(f"target must be 'predicted' or a class of the hierarchy ({', '.join(bundle.class_names())}), "
                            f"got {target!r}")
        chosen = [found] * len(pil)
    results: list[Explanation | None] = [None] * len(pil)
    for key in dict.fromkeys((node.key, c) for node, c in chosen):
        members = [i for i, (node, c) in enumerate(chosen) if (node.key, c) == key]
        node = chosen[members[0]][0]
        done = explain(node.bundle, [pil[i] for i in members], method=method, target=key[1], target_layer=target_layer,
                       batch_size=batch_size, options=options)
        for i, e in zip(members, done):
            e.source = sources[i]
            e.extra.update({"node": node.key, "level": bundle.levels[node.level].name})
            results[i] = e
    return results  # type: ignore[return-value]
