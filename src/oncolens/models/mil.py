"""Multiple-instance learning: a classifier of bags of instance features (a slide's tiles, a large image's
crops) trained from one label per bag, and the bundle kind that carries it with its feature extractor.

Bag heads (registered in :data:`BAG_HEADS`):

* ``abmil``: gated attention pooling (Ilse, Tomczak and Welling 2018): a = w^T (tanh(V h) * sigmoid(U h)),
  softmax over the bag's instances, the bag is the attention-weighted mean of the instances.
* ``clam-sb``: the same pooling plus CLAM's instance-level clustering loss (Lu et al. 2021, single branch):
  the ``k`` most and least attended instances of a bag are pseudo-labelled in and out of its class and an
  instance classifier is trained on them beside the bag loss.
* ``mean`` and ``max``: mean pooling of the instances, and the largest instance score per class; the
  baselines (their "attention" is uniform, and the share of the max, respectively).

A new bag head is one class registered with ``@BAG_HEADS.decorator()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from .. import __version__
from ..data.dataset import Unreadable
from ..data.limits import check_count
from ..errors import BundleError, ConfigError, DataError
from ..files import atomic_write, atomic_write_json
from ..registry import Registry
from .bundle import HierarchyNode, Level, ModelBundle, bundle_header, register_bundle_kind

__all__ = ["BAG_HEADS", "BagHead", "BagClassifier", "MILBundle", "BagHeadBackend", "save_mil_bundle",
           "load_mil_bundle", "is_bag_manifest"]

#: name -> bag head class (in_dim, n_classes, hidden, dropout)
BAG_HEADS: Registry[type["BagHead"]] = Registry("bag head")


class BagHead(nn.Module):
    """Maps one bag's instance features (n, d) to class logits (C,), attention over the instances (n,) and
    the bag's embedding (what OOD detectors read)."""

    name = "bag-head"

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.25):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def extra_loss(self, target: torch.Tensor) -> torch.Tensor | None:
        """A loss beside the bag's cross-entropy, from the last forward pass (None: none)."""
        return None


@BAG_HEADS.decorator()
class MeanPool(BagHead):
    name = "mean"

    def forward(self, x):
        h = self.project(x)
        z = h.mean(0)
        return self.classifier(z), torch.full((len(x),), 1.0 / len(x), device=x.device), z


@BAG_HEADS.decorator()
class MaxPool(BagHead):
    name = "max"

    def forward(self, x):
        h = self.project(x)
        instance = self.classifier(h)  # (n, C)
        logits, _ = instance.max(0)
        share = torch.softmax(instance[:, int(logits.argmax())], 0)
        return logits, share, h.max(0).values


@BAG_HEADS.decorator()
class GatedAttention(BagHead):
    name = "abmil"

    def __init__(self, in_dim, n_classes, hidden=128, dropout=0.25):
        super().__init__(in_dim, n_classes, hidden, dropout)
        attention = hidden // 2
        self.V, self.U, self.w = nn.Linear(hidden, attention), nn.Linear(hidden, attention), nn.Linear(attention, 1)

    def attend(self, x):
        h = self.project(x)
        a = self.w(torch.tanh(self.V(h)) * torch.sigmoid(self.U(h))).squeeze(-1)
        return h, torch.softmax(a, 0)

    def forward(self, x):
        h, attention = self.attend(x)
        z = attention @ h
        return self.classifier(z), attention, z


@BAG_HEADS.decorator()
class ClamSingleBranch(GatedAttention):
    name = "clam-sb"
    #: instances pseudo-labelled at each end of a bag's attention ranking; weight of the instance loss
    k, instance_weight = 8, 0.3

    def __init__(self, in_dim, n_classes, hidden=128, dropout=0.25):
        super().__init__(in_dim, n_classes, hidden, dropout)
        self.instance = nn.ModuleList(nn.Linear(hidden, 2) for _ in range(n_classes))
        self._last: tuple | None = None

    def forward(self, x):
        h, attention = self.attend(x)
        self._last = (h, attention)
        z = attention @ h
        return self.classifier(z), attention, z

    def extra_loss(self, target):
        if self._last is None:
            return None
        h, attention = self._last
        k = min(self.k, len(h) // 2)
        if k < 1:
            return None
        order = torch.argsort(attention, descending=True)
        chosen = torch.cat([order[:k], order[-k:]])
        pseudo = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
        logits = self.instance[int(target)](h[chosen])
        return self.instance_weight * nn.functional.cross_entropy(logits, pseudo)


class BagClassifier(nn.Module):
    """A bag head with its configuration (what a MIL bundle rebuilds it from)."""

    def __init__(self, head: str, in_dim: int, n_classes: int, hidden: int = 128, dropout: float = 0.25):
        super().__init__()
        self.head = BAG_HEADS.get(head)(in_dim, n_classes, hidden, dropout)
        self.config = {"name": f"mil-{head}", "head": head, "in_dim": in_dim, "num_classes": n_classes,
                       "hidden": hidden, "dropout": dropout}
        self.name, self.num_classes = self.config["name"], n_classes

    def forward(self, bag: torch.Tensor) -> torch.Tensor:
        """Logits (1, C) of one bag (n, d) or (1, n, d)."""
        logits, _, _ = self.head(bag.reshape(-1, bag.shape[-1]))
        return logits.unsqueeze(0)

    def explain(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head(bag.reshape(-1, bag.shape[-1]))

    def instance_probabilities(self, bag: torch.Tensor) -> torch.Tensor:
        """Each instance's class probabilities from the bag classifier's own layer (n, C): what an instance
        alone would say; weighted by attention, where the bag's decision comes from."""
        head = self.head
        return torch.softmax(head.classifier(head.project(bag.reshape(-1, bag.shape[-1]))), -1)


def is_bag_manifest(frame) -> bool:
    """Whether a manifest's rows are bag files (``oncolens features``), not images."""
    return "bag_source" in frame.columns or (len(frame) > 0 and frame["path"].astype(str).str.endswith(
        ".safetensors").all())


def save_mil_bundle(model: BagClassifier, classes: list[str], extractor: dict, bag: dict, path: str | Path,
                    meta: dict | None = None) -> Path:
    """A MIL bundle folder: the bag head's weights, and how bags are made (extractor, instance size/mpp)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    atomic_write_json(path / "bundle.json", {**bundle_header("mil", meta), "model": model.config,
                                             "classes": list(classes), "extractor": extractor, "bag": bag,
                                             "meta": meta or {}})
    return path


def load_mil_bundle(path: str | Path, device: str = "cpu", info: dict | None = None) -> "MILBundle":
    from safetensors.torch import load_file

    from .bags import BagConfig

    path = Path(path)
    info = info or json.loads((path / "bundle.json").read_text())
    where = path / "bundle.json"
    try:  # every size is checked before a layer or a bag is made of it
        config = info["model"]
        sizes = {key: check_count(int(config[key]), key, f"model.{key}") for key in ("in_dim", "num_classes")}
        sizes["hidden"] = check_count(int(config.get("hidden", 128)), "hidden", "model.hidden")
        BagConfig(**info.get("bag", {}))  # its instances' size and count, its slides' mpp and tissue share
        input_size = info.get("extractor", {}).get("input_size")
        if input_size is not None:
            check_count(input_size, "input_size", "extractor.input_size")
    except (ConfigError, DataError) as exc:
        raise BundleError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{path}: not a loadable MIL bundle ({type(exc).__name__}: {exc})") from None
    try:
        model = BagClassifier(config["head"], sizes["in_dim"], sizes["num_classes"], sizes["hidden"],
                              float(config.get("dropout", 0.25)))
        model.load_state_dict(load_file(str(path / "model.safetensors")))
    except (KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
        raise BundleError(f"{path}: not a loadable MIL bundle ({type(exc).__name__}: {exc})") from None
    from .trust import load_trust

    return MILBundle(model.eval(), list(info["classes"]), info.get("extractor", {}), info.get("bag", {}),
                     info.get("meta", {}), path, load_trust(path))


class BagHeadBackend:
    """Runs a bag classifier's head (PyTorch: small, and its input is a bag of any number of instances, which no
    exported graph takes): one bag ``(1, n, d)`` per call, its embedding ``(1, hidden)`` (what the OOD
    detectors read) and its logits ``(1, classes)``. The ``bag-head`` back-end of the scoring loop."""

    name = "torch"

    def __init__(self, bundle: ModelBundle):
        model = getattr(bundle, "model", None)
        if not isinstance(model, BagClassifier):
            raise ConfigError("the bag-head back-end runs bag classifiers (MIL bundles) only")
        self.model = model

    def forward(self, group: int, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits, _, embedding = self.model.explain(x)
        return embedding.float().cpu()[None], [logits.float().cpu()[None]]


class _Bags(Dataset):
    """One bag per item: a bag file as stored, or a slide, image file or decoded image through the bundle's
    extractor; an input that cannot be made into a bag is :class:`Unreadable` with the reason."""

    def __init__(self, bundle: "MILBundle", items: list[Any], options: dict[str, Any]):
        self.bundle, self.items, self.options = bundle, items, options

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        try:  # an image in memory (an upload): its crops are the bag
            arrays = self.bundle.bag_of(item if isinstance(item, Image.Image) else str(item), **self.options)
        except DataError as exc:
            return Unreadable(index, str(exc))
        return (torch.from_numpy(np.ascontiguousarray(arrays["features"], dtype=np.float32)),), index


class MILBundle(ModelBundle):
    """A bag classifier and the extractor that makes its bags: scores bag files, slides or large images.

    It is scored by the one scoring loop (``score``, ``iter_scores``: one row per bag; what differs is its
    :meth:`scoring_inputs` and its :meth:`runner`) and exposes ``attention(input)`` per instance for
    explanations; its one node is ``root``.
    """

    kind = "mil"
    task = "bags"

    def __init__(self, model: BagClassifier, classes: list[str], extractor: dict, bag: dict, meta: dict,
                 path: Path | None, trust=None):
        self.model, self.classes, self.extractor_spec, self.bag_spec = model, list(classes), extractor, bag
        self.meta, self.path, self.trust = meta, path, trust
        self.levels = [Level("label", meta.get("label_col", "label"))]
        self.leaf_paths = {c: (c,) for c in self.classes}
        self.root = HierarchyNode("root", (), self, {c: c for c in self.classes})
        self._extractor = None

    @property
    def preprocessing(self):
        from ..data.transforms import Preprocessing

        return Preprocessing.from_dict(self.extractor_spec["preprocessing"])

    def describe(self) -> tuple[str, dict]:
        return self.model.name, self.model.config

    def runner(self, backend: Any = "auto", **options: Any) -> Any:
        """The bag head's back-end (:class:`BagHeadBackend`) whatever back-end is named (there is no exported
        graph of a bag head); a back-end object passes through."""
        from .scoring import make_backend

        return make_backend(self, "bag-head" if isinstance(backend, str) else backend)

    def scoring_inputs(self, items: list[Any], *, batch_size: int | None = None, num_workers: int | None = None,
                       tta: str | None = None, perturb: str | None = None, max_pixels: int | None = None,
                       progress: Any = None) -> Any:
        """One bag per batch (bags differ in size) and no test-time views: each input's bag (:meth:`bag_of`,
        made with ``batch_size`` instances per batch, default 32, read by ``num_workers``; ``progress(done,
        total)`` per batch of instances); the embedding is what the OOD detectors read. ``tta``, ``perturb``
        and ``max_pixels`` are image options: a bag classifier scores the bag as made."""
        from .scoring import ScoringInputs

        options = {"batch_size": batch_size, "num_workers": num_workers, "progress": progress}
        return ScoringInputs(dataset=_Bags(self, list(items), options), batch_size=1, num_workers=0,
                             groups=[[self.root]], input_of=[0],
                             feature_width=lambda node: self.model.head.classifier.in_features)

    def shared_backbones(self) -> list:
        return []

    def info(self) -> dict:
        return {"kind": "mil", "classes": list(self.classes), "model": self.model.name,
                "extractor": {k: v for k, v in self.extractor_spec.items() if k != "preprocessing"},
                "bag": self.bag_spec, "version": self.meta.get("oncolens_version") or __version__}

    # --- bags ---------------------------------------------------------------------------------
    def extractor(self):
        from .bags import Extractor, load_extractor

        if self._extractor is None:
            spec = self.extractor_spec
            made = load_extractor(bundle=spec.get("bundle"), model=spec.get("model", "tf_efficientnet_lite0"),
                                  weights=spec.get("weights", "imagenet"), input_size=spec.get("input_size"))
            self._extractor = Extractor(bundle=made.bundle, spec=spec)
        return self._extractor

    def bag_of(self, source: "str | Image.Image", **options: Any) -> dict[str, np.ndarray]:
        """The bag of one input: a bag file as stored, or a slide, image file or decoded image through the
        extractor."""
        from .bags import BagConfig, extract_bag, read_bag

        if isinstance(source, (str, Path)) and str(source).endswith(".safetensors"):
            arrays, metadata = read_bag(source)
            made_by = metadata.get("extractor")
            if made_by is not None and {k: v for k, v in made_by.items() if k != "preprocessing"} != \
                    {k: v for k, v in self.extractor_spec.items() if k != "preprocessing"}:
                raise DataError(f"{source} was made by another extractor ({made_by}) than this bundle's")
            return arrays
        return extract_bag(self.extractor(), source, BagConfig(**self.bag_spec),
                           batch_size=options.get("batch_size") or 32, num_workers=options.get("num_workers"),
                           progress=options.get("progress"))

    def forward_bag(self, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Logits (C,), attention (n,) and embedding of one bag."""
        with torch.inference_mode():
            logits, attention, embedding = self.model.explain(torch.from_numpy(np.asarray(arrays["features"])))
        return logits.numpy(), attention.numpy(), embedding.numpy()

    def attention(self, source: str, **options: Any) -> dict[str, np.ndarray]:
        """One bag with, per instance, its ``attention`` and class ``instance_probabilities``, and the bag's
        ``probabilities`` (calibrated as scoring calibrates them): the bag's ``coords`` say where the
        instances are."""
        from .scoring import calibrated

        arrays = dict(self.bag_of(source, **options))
        logits, attention, _ = self.forward_bag(arrays)
        with torch.inference_mode():
            instances = self.model.instance_probabilities(torch.from_numpy(np.asarray(arrays["features"]))).numpy()
        return {**arrays, "attention": attention, "instance_probabilities": instances,
                "probabilities": calibrated(self, {"root": logits[None]})["root"][0]}


register_bundle_kind("mil", lambda path, device, info: load_mil_bundle(path, device, info))
