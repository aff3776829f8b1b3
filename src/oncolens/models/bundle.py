"""Model bundles: one interface for every kind of bundle.

A bundle is a folder with ``bundle.json`` and safetensors weights: everything needed to predict on
another machine, loaded without unpickling anything. Every bundle is a tree of classifiers
(:class:`ModelBundle`): a *flat* bundle is a one-node tree (one classifier whose classes are the
leaves); a *hierarchical* bundle routes an image down the levels of a label hierarchy. Consumers use
the tree interface (``score``, ``nodes``, ``route``, ``decider``, ``node_for_class``,
``labels_of``) and never ask which kind they hold.

A new kind of bundle is one class with a loader registered by :func:`register_bundle_kind`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __commit_id__, __version__
from ..data.limits import check_count
from ..data.transforms import Preprocessing
from ..errors import BundleError, ConfigError, InputNotFound
from ..files import atomic_write, atomic_write_json
from ..registry import Registry
from .factory import OncoClassifier, create_model
from .registry import prefers_channels_last
from .trust import Trust, load_trust

if TYPE_CHECKING:
    import pandas as pd
    from .scoring import Backend, Scores, ScoringInputs

__all__ = ["Bundle", "ModelBundle", "Level", "HierarchyNode", "save_bundle", "load_bundle", "load_any_bundle",
           "read_bundle_info", "register_bundle_kind", "bundle_header", "provenance", "file_sha256", "BUNDLE_FORMAT"]

#: 2: bundle.json records provenance (format 1, oncolens <= 0.1, is read and migrated on load)
BUNDLE_FORMAT = 2
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Level:
    """One level of a bundle's label tree: its name and the manifest column that holds its labels."""

    name: str
    column: str


@dataclass
class HierarchyNode:
    """One classifier of the tree: its flat bundle, and per class the child node or a leaf name."""

    key: str
    prefix: tuple[str, ...]
    bundle: "Bundle"
    children: dict[str, "HierarchyNode | str"]

    @property
    def level(self) -> int:
        return len(self.prefix)

    @property
    def model(self) -> OncoClassifier:
        return self.bundle.model


class ModelBundle:
    """The interface every bundle answers: a tree of classifiers over ``levels`` with leaf ``classes``.

    Subclasses provide ``root``, ``levels``, ``classes``, ``leaf_paths``, ``meta`` and ``path``.
    """

    root: HierarchyNode
    levels: list[Level]
    classes: list[str]
    leaf_paths: dict[str, tuple[str, ...]]
    meta: dict
    path: Path | None
    #: calibration, prediction sets and OOD detectors (:mod:`.trust`); None: never calibrated
    trust: Trust | None = None

    kind: str = "abstract"
    #: what the bundle's model learnt from (:mod:`oncolens.training.tasks`): "images", or "bags" for a bag
    #: classifier (multiple-instance learning: one decision per bag of instances, explained by its attention)
    task: str = "images"

    # --- the tree ---------------------------------------------------------------------------
    def nodes(self) -> Iterator[HierarchyNode]:
        """Every classifier, top first (breadth first)."""
        queue = [self.root]
        while queue:
            node = queue.pop(0)
            yield node
            queue.extend(child for child in node.children.values() if isinstance(child, HierarchyNode))

    @property
    def preprocessing(self) -> Preprocessing:
        """The top classifier's preprocessing (every node may have its own)."""
        return self.root.bundle.preprocessing

    @property
    def level_names(self) -> list[str]:
        return [lv.name for lv in self.levels]

    @property
    def is_tree(self) -> bool:
        """True when more than one classifier decides (the negation of :attr:`single_classifier`, so the two
        can never disagree)."""
        return not self.single_classifier

    @property
    def single_classifier(self) -> bool:
        """True when one classifier decides every class, under the bundle's own class names."""
        return list(self.root.children.items()) == [(c, c) for c in self.classes]

    def shared_backbones(self) -> list[list[HierarchyNode]]:
        """Nodes grouped by identical backbone weights and preprocessing: each group needs one backbone
        pass per image, then one head per node."""
        cached = getattr(self, "_groups", None)
        if cached is None:
            groups: dict[tuple[str, str], list[HierarchyNode]] = {}
            for node in self.nodes():
                key = (json.dumps(node.bundle.preprocessing.to_dict(), sort_keys=True),
                       weights_fingerprint(node.bundle.model.backbone))
                groups.setdefault(key, []).append(node)
            cached = list(groups.values())
            self._groups = cached
        return cached

    def describe(self) -> tuple[str, dict]:
        """A display name and the model configuration(s)."""
        if not self.is_tree:
            return self.root.model.name, self.root.model.config
        nodes = {node.key: node.model.config for node in self.nodes()}
        return (f"{self.kind} ({' > '.join(self.level_names)}; {len(nodes)} classifiers)",
                {"kind": self.kind, "nodes": nodes})

    def info(self) -> dict:
        """What a user or client needs to know about the bundle (JSON-safe)."""
        out = {"kind": self.kind, "classes": list(self.classes), "input_size": self.preprocessing.size,
               "channels": self.preprocessing.channels, "model": self.root.model.config.get("name"),
               "version": self.meta.get("oncolens_version") or __version__}
        if self.is_tree:
            out["levels"] = [{"name": lv.name, "column": lv.column} for lv in self.levels]
            out["nodes"] = [{"node": node.key, "level": self.levels[node.level].name, "classes": list(node.children),
                             "model": node.model.config.get("name")} for node in self.nodes()]
        return out

    # --- labels -----------------------------------------------------------------------------
    def labels_of(self, frame: pd.DataFrame, label_col: str | None = None) -> pd.Series:
        """Each row's leaf class from the bundle's own level columns (``''`` where a row's path is not a
        leaf of the tree), or from ``label_col`` (default: the column the bundle was trained on, else
        ``label``) when the level columns are absent or ``label_col`` is given."""
        own = [lv.column for lv in self.levels]
        if label_col is None and self.is_tree and all(c in frame.columns for c in own):
            by_path = {p: name for name, p in self.leaf_paths.items()}
            paths = frame[own].fillna("").astype(str).itertuples(index=False)
            import pandas as pd

            return pd.Series([by_path.get(tuple(p), "") for p in paths], index=frame.index, dtype=object)
        column = label_col or self.meta.get("label_col", "label")
        column = column if column in frame.columns else "label"
        return frame[column].astype(str)

    # --- routing ----------------------------------------------------------------------------
    def combine(self, node_proba: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Leaf probabilities (path products) and routed leaf indices from each node's ``(n, classes)`` output."""
        n = len(next(iter(node_proba.values())))
        leaf = np.zeros((n, len(self.classes)))
        routed = np.full(n, -1)
        index_of = {name: i for i, name in enumerate(self.classes)}

        def walk(node: HierarchyNode, mass: np.ndarray, chosen: np.ndarray) -> None:
            proba = node_proba[node.key]
            best = proba.argmax(1)
            for c, child in enumerate(node.children.values()):
                here = chosen & (best == c)
                if isinstance(child, HierarchyNode):
                    walk(child, mass * proba[:, c], here)
                else:
                    leaf[:, index_of[child]] = mass * proba[:, c]
                    routed[here] = index_of[child]

        walk(self.root, np.ones(n), np.ones(n, dtype=bool))
        return leaf, routed

    def route(self, node_proba: Mapping[str, np.ndarray], index: int) -> list[tuple[HierarchyNode, int]]:
        """The nodes image ``index`` passes through and the class each one chose."""
        path, node = [], self.root
        while True:
            c = int(node_proba[node.key][index].argmax())
            path.append((node, c))
            child = list(node.children.values())[c]
            if not isinstance(child, HierarchyNode):
                return path
            node = child

    def decider(self, node_proba: Mapping[str, np.ndarray], index: int,
                level: int | None = None) -> tuple[HierarchyNode, int]:
        """The node (and its chosen class) that decided image ``index`` at ``level`` of its route
        (default: the last decision)."""
        path = self.route(node_proba, index)
        return path[-1] if level is None else path[min(level, len(path) - 1)]

    def node_for_class(self, name: str) -> tuple[HierarchyNode, int] | None:
        """The node that decides class ``name`` (a leaf or an intermediate value) and its index there."""
        for node in self.nodes():
            for c, (value, child) in enumerate(node.children.items()):
                if name in (value, child if isinstance(child, str) else None):
                    return node, c
        return None

    def class_names(self) -> list[str]:
        """Every class any node decides (intermediate values and leaves)."""
        return sorted({v for n in self.nodes() for v in n.children} | set(self.classes))

    def level_records(self, scores: "Scores", index: int) -> list[dict]:
        """The decision at every level image ``index`` passed: level, node, label, confidence, probabilities."""
        if not self.is_tree:
            return []
        records = []
        for node, c in self.route(scores.node_probabilities, index):
            names = list(node.children)
            row = scores.node_probabilities[node.key][index]
            records.append({"level": self.levels[node.level].name, "node": node.key, "label": names[c],
                            "confidence": float(row[c]), "probabilities": dict(zip(names, map(float, row)))})
        return records

    # --- scoring ----------------------------------------------------------------------------
    def runner(self, backend: "str | Backend" = "auto", **options: Any) -> "Backend":
        """The back-end that runs this bundle's networks (see :func:`oncolens.models.scoring.make_backend`)."""
        from .scoring import make_backend

        return make_backend(self, backend, **options)

    def scoring_inputs(self, items: Sequence[Any], **options: Any) -> "ScoringInputs":
        """What the scoring loop needs to score ``items`` with this bundle: images decoded and preprocessed
        for each backbone group, a batch of them at a time (see :func:`oncolens.models.scoring.image_inputs`)."""
        from .scoring import image_inputs

        return image_inputs(self, items, **options)

    def score(self, inputs: Any, backend: "str | Backend" = "auto", **options: Any) -> "Scores":
        """Score images, image files or manifest rows: probabilities per node, the routed decision, the
        leaf probabilities, optionally the penultimate features, and ``{source: reason}`` for inputs
        that could not be read (see :func:`oncolens.models.scoring.score`)."""
        from .scoring import score

        return score(self, inputs, backend=backend, **options)

    def iter_scores(self, inputs: Any, backend: "str | Backend" = "auto", **options: Any) -> Iterator["Scores"]:
        """:meth:`score` one batch at a time (bounded memory whatever the number of inputs)."""
        from .scoring import iter_scores

        return iter_scores(self, inputs, backend=backend, **options)


def weights_fingerprint(*modules: torch.nn.Module) -> str:
    """A hash of the modules' weights and buffers (equal for copies of one frozen backbone)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class Bundle(ModelBundle):
    """A flat bundle: one classifier (the model in eval mode) plus what it was trained on."""

    kind = "flat"

    def __init__(self, model: OncoClassifier, classes: Sequence[str], preprocessing: Preprocessing,
                 meta: dict | None = None, path: Path | None = None):
        self.model = model
        self.classes = list(classes)
        self.preprocessing_ = preprocessing
        self.meta = meta or {}
        self.path = path
        self.levels = [Level("label", self.meta.get("label_col", "label"))]
        self.leaf_paths = {c: (c,) for c in self.classes}
        self.root = HierarchyNode("root", (), self, {c: c for c in self.classes})

    @property
    def preprocessing(self) -> Preprocessing:  # type: ignore[override]
        return self.preprocessing_

    def __repr__(self) -> str:
        return f"Bundle({self.model.name}, classes={self.classes}, path={self.path})"


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_commit() -> str | None:
    """The git commit of the oncolens source that runs: the checkout's HEAD (with ``-dirty`` when it has
    uncommitted changes) for a source tree, else the commit the installed package was built from."""
    here = Path(__file__).resolve().parent
    if (here.parents[2] / ".git").exists():  # src/oncolens/models -> the repository
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                                  timeout=5).stdout.strip()

        try:
            head = git("rev-parse", "HEAD")
            if head:
                return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return __commit_id__.lstrip("g") if __commit_id__ else None


def provenance(manifest: str | Path | None = None) -> dict:
    """What made a bundle: oncolens's version and commit, Python's and the main libraries' versions, the
    platform, and the SHA-256 of the training ``manifest`` when it is a file."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    out = {"oncolens": __version__, "commit": _source_commit(), "python": platform.python_version(),
           "platform": platform.platform(terse=True),
           "libraries": {name: installed(name) for name in ("torch", "torchvision", "timm", "numpy", "scikit-learn")}}
    if manifest is not None and Path(manifest).is_file():
        out["manifest"] = {"path": str(manifest), "sha256": file_sha256(manifest)}
    return out


def bundle_header(kind: str, meta: dict | None = None) -> dict:
    """The fields every ``bundle.json`` starts with: format, kind, the writing version and its provenance
    (with the hash of ``meta["trained_on"]``, the training manifest)."""
    return {"format": BUNDLE_FORMAT, "kind": kind, "oncolens_version": __version__,
            "provenance": provenance((meta or {}).get("trained_on"))}


def _migrate(info: dict) -> dict:
    """``info`` in the current format (format 1 had no provenance: it says so)."""
    if info.get("format") == 1:
        info = {**info, "format": BUNDLE_FORMAT, "migrated_from_format": 1,
                "provenance": {"oncolens": info.get("oncolens_version"), "commit": None,
                               "note": "written by bundle format 1, which recorded no provenance"}}
    return info


def version_note(info: dict) -> str | None:
    """A sentence when the bundle was written by another oncolens version than the one loading it."""
    from packaging.version import InvalidVersion, Version

    written = info.get("oncolens_version")
    try:
        if written is None or Version(written).release == Version(__version__).release:
            return None
        newer = Version(written) > Version(__version__)
    except InvalidVersion:
        return f"written by oncolens {written!r} (not a version this one can compare), loaded by {__version__}"
    if newer:
        return f"written by a newer oncolens ({written}) than the one loading it ({__version__}): upgrade oncolens"
    return (f"written by oncolens {written}, loaded by {__version__}"
            + (f" (migrated from bundle format {info['migrated_from_format']})" if "migrated_from_format" in info
               else ""))


def save_bundle(model: OncoClassifier, classes: list[str], path: str | Path, meta: dict | None = None) -> Path:
    """Write ``model`` and its metadata to the folder ``path`` (each file atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if len(classes) != model.num_classes:
        raise BundleError(f"{len(classes)} class names for a model with {model.num_classes} outputs")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    info = {
        **bundle_header("flat", meta),
        "model": {**model.config, "weights": "random"},  # rebuilt empty, then filled from the file
        "trained_from_weights": model.config.get("weights"),
        "classes": list(classes),
        "preprocessing": model.preprocessing.to_dict(),
        "meta": meta or {},
    }
    atomic_write_json(path / "bundle.json", info)
    return path


def read_bundle_info(path: str | Path) -> dict:
    """The parsed ``bundle.json`` of the bundle folder ``path`` (checked for format and kind)."""
    path = Path(path)
    info_file = path / "bundle.json"
    if not path.exists():
        raise InputNotFound(f"bundle not found: {path}")
    if not info_file.is_file():
        raise BundleError(f"{path} is not an oncolens bundle (no bundle.json)")
    try:
        info = json.loads(info_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{info_file}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise BundleError(f"{info_file}: expected a JSON object")
    if info.get("format") not in (1, BUNDLE_FORMAT):
        newer = isinstance(info.get("format"), int) and info["format"] > BUNDLE_FORMAT
        raise BundleError(f"{path}: bundle format {info.get('format')} is not supported (this oncolens reads formats "
                          f"1 to {BUNDLE_FORMAT})" + ("; it was written by a newer oncolens: upgrade" if newer else ""))
    info = _migrate(info)
    kind = info.get("kind", "flat")
    if kind not in _KINDS:
        raise BundleError(f"{path}: unknown bundle kind {kind!r} (known: {', '.join(_KINDS)})")
    return info


def _check_classes(value: Any, n_outputs: int, where: Path) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
        raise BundleError(f"{where}: 'classes' must be a list of non-empty strings")
    if len(set(value)) != len(value):
        raise BundleError(f"{where}: 'classes' has repeated names")
    if len(value) != n_outputs:
        raise BundleError(f"{where}: {len(value)} classes listed for a model with {n_outputs} outputs")
    return list(value)


def load_bundle(path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a flat bundle folder written by :func:`save_bundle` (eval mode, on ``device``)."""
    path = Path(path)
    info = read_bundle_info(path)
    if info.get("kind", "flat") != "flat":
        raise BundleError(f"{path} is a {info['kind']} bundle; load it with oncolens.models.load_any_bundle")
    where = path / "bundle.json"
    try:
        cfg = info["model"]
        preprocessing = Preprocessing.from_dict(info["preprocessing"])
        input_size = check_count(int(cfg["input_size"]), "input_size", "model input_size")
        num_classes = check_count(int(cfg["num_classes"]), "num_classes", "model num_classes")
        model = create_model(cfg["name"], num_classes=num_classes, weights="random", freeze="full",
                             head=cfg["head"], input_size=input_size, channels=int(cfg["channels"]),
                             encoder_record=cfg.get("encoder") if isinstance(cfg.get("encoder"), dict) else None)
    except ConfigError as exc:
        raise BundleError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: missing or malformed field {exc}") from None
    classes = _check_classes(info.get("classes"), model.num_classes, where)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise BundleError(f"{path}: no model.safetensors")
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{weights}: unreadable weights ({exc})") from None
    except RuntimeError as exc:
        raise BundleError(f"{weights}: weights do not fit the model in bundle.json ({str(exc).splitlines()[0]})") from None
    model.config["weights"] = info.get("trained_from_weights", "random")
    model.config["freeze"] = cfg.get("freeze", "full")
    model.eval().to(device)
    if prefers_channels_last(cfg["name"], device):
        model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    meta = info.get("meta", {})
    bundle = Bundle(model=model, classes=classes, preprocessing=preprocessing,
                    meta={**meta, "oncolens_version": info.get("oncolens_version")}, path=path)
    bundle.trust = load_trust(path)
    return bundle


#: kind -> loader(path, device, info)
_KINDS: Registry[Callable[[Path, str, dict], ModelBundle]] = Registry("bundle kind")


def register_bundle_kind(kind: str, loader: Callable[[Path, str, dict], ModelBundle], override: bool = False) -> None:
    """Make ``load_any_bundle`` load bundles whose ``bundle.json`` says ``"kind": kind``."""
    _KINDS.register(kind, loader, override)


register_bundle_kind("flat", lambda path, device, info: load_bundle(path, device=device))


def load_any_bundle(path: str | Path, device: str = "cpu") -> ModelBundle:
    """The bundle at ``path``, whatever its kind."""
    info = read_bundle_info(path)
    note = version_note(info)
    if note:
        log.warning("%s: %s", path, note)
    bundle = _KINDS.get(info.get("kind", "flat"))(Path(path), device, info)
    if getattr(bundle, "trust", None) is None:  # a flat bundle's loader has read its calibration already
        bundle.trust = load_trust(path)
    return bundle


def as_bundle(bundle: "str | Path | ModelBundle", device: str = "cpu") -> ModelBundle:
    """``bundle`` itself when loaded, else the bundle loaded from that folder."""
    return bundle if isinstance(bundle, ModelBundle) else load_any_bundle(bundle, device=device)
