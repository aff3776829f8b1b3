"""Hierarchical bundles: a tree of flat bundles that routes an image down the levels of a label hierarchy.

A hierarchical bundle is a folder with ``bundle.json`` (``"kind": "hierarchical"``) and one flat bundle
per tree node under ``nodes/``. The root classifies the first level (e.g. benign / malignant, or organ);
each of its classes leads either to the classifier of the next level (e.g. the benign subtypes) or, when
that branch has a single value, straight to a leaf.

Prediction routes each image by the most probable class at every level. The leaf probabilities are the
products of the probabilities along each root-to-leaf path (every node scores every image, so they sum
to one); they carry the ranking used by ROC-AUC, while the routed leaf is the decision.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .. import __version__
from ..data import build_transforms
from .bundle import BUNDLE_FORMAT, Bundle, load_bundle, read_bundle_info
from .inference import predict_manifest_heads

__all__ = ["Level", "HierarchyNode", "HierarchicalBundle", "HierarchyTree", "LEVEL_ALIASES", "resolve_levels",
           "leaf_names", "level_names", "save_hierarchical_bundle", "load_hierarchical_bundle", "load_any_bundle",
           "predict_manifest_hierarchical"]

#: Level names a user may give instead of a manifest column: the first column present is used.
LEVEL_ALIASES: dict[str, tuple[str, ...]] = {
    "binary": ("tumor_class", "binary"),
    "subtype": ("subtype", "subclass"),
    "organ": ("organ", "cancer_type"),
    "tumor": ("tumor", "subclass", "tumor_class"),
}


@dataclass(frozen=True)
class Level:
    """One level of the hierarchy: its name and the manifest column that holds its labels."""

    name: str
    column: str


def resolve_levels(columns: Sequence[str], levels: Sequence[str]) -> list[Level]:
    """Map level names (a column, or an alias of :data:`LEVEL_ALIASES`) to manifest columns."""
    if len(levels) < 2:
        raise ValueError(f"a hierarchy needs at least two levels, got {list(levels)}")
    resolved = []
    for name in levels:
        candidates = (name,) + LEVEL_ALIASES.get(name, ())
        column = next((c for c in candidates if c in columns), None)
        if column is None:
            raise ValueError(f"level {name!r}: none of the columns {list(candidates)} is in the manifest "
                             f"({list(columns)})")
        resolved.append(Level(name, column))
    if len({level.column for level in resolved}) != len(resolved):
        raise ValueError(f"levels {list(levels)} resolve to repeated columns {[lv.column for lv in resolved]}")
    return resolved


def level_names(paths: Sequence[tuple[str, ...]], depth: int) -> dict[tuple[str, ...], str]:
    """Class name of each distinct path prefix of length ``depth``: its last value, or the joined path
    (``a/b``) when the last values alone would collide."""
    prefixes = sorted({tuple(p[:depth]) for p in paths})
    last = [p[-1] for p in prefixes]
    unique = len(set(last)) == len(last)
    return {p: (p[-1] if unique else "/".join(p)) for p in prefixes}


def leaf_names(paths: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """Leaf class name of each full path (see :func:`level_names`)."""
    depth = {len(p) for p in paths}
    if len(depth) != 1:
        raise ValueError("every path must have the same number of levels")
    return level_names(paths, depth.pop())


def _paths_of(frame: pd.DataFrame, levels: Sequence[Level]) -> list[tuple[str, ...]]:
    values = frame[[lv.column for lv in levels]].fillna("").astype(str)
    return [tuple(row) for row in values.itertuples(index=False)]


@dataclass
class HierarchyNode:
    """One classifier of the tree: its flat bundle, and per class the child node or a leaf name."""

    key: str
    prefix: tuple[str, ...]
    bundle: Bundle
    children: dict[str, "HierarchyNode | str"]

    @property
    def level(self) -> int:
        return len(self.prefix)


@dataclass
class HierarchyTree:
    """The tree's shape without models (what a study trains): node prefixes and their classes."""

    levels: list[Level]
    leaves: dict[tuple[str, ...], str]  # full path -> leaf class name
    nodes: dict[tuple[str, ...], list[str]] = field(default_factory=dict)  # prefix -> classes of its classifier

    @classmethod
    def from_manifest(cls, frame: pd.DataFrame, levels: Sequence[Level]) -> "HierarchyTree":
        """The tree spanned by the rows' label paths; rows with an empty level value must be removed first."""
        paths = sorted(set(_paths_of(frame, levels)))
        if any("" in p or "nan" in p for p in paths):
            raise ValueError("some rows have an empty value at a level; drop them before building the tree")
        tree = cls(list(levels), leaf_names(paths))
        tree._add_node((), paths)
        return tree

    def _add_node(self, prefix: tuple[str, ...], paths: list[tuple[str, ...]]) -> None:
        depth = len(prefix)
        if depth == len(self.levels):
            return
        values = sorted({p[depth] for p in paths if p[:depth] == prefix})
        if len(values) > 1:
            self.nodes[prefix] = values
        for value in values:  # a single value is passed through with probability one
            self._add_node(prefix + (value,), paths)

    def node_key(self, prefix: tuple[str, ...]) -> str:
        return "root" if not prefix else re.sub(r"[^\w.-]+", "_", "__".join(prefix))

    def child_of(self, prefix: tuple[str, ...], value: str) -> tuple[str, ...] | str:
        """The node prefix an image goes to after ``value`` at ``prefix``, or the leaf name it reaches."""
        path = prefix + (value,)
        while len(path) < len(self.levels) and path not in self.nodes:
            path = path + (next(p for p in self.leaves if p[:len(path)] == path)[len(path)],)
        return self.leaves[path] if len(path) == len(self.levels) else path

    @property
    def root(self) -> tuple[str, ...]:
        root: tuple[str, ...] | str = ()
        if () not in self.nodes:  # a single top-level value: start at the first level that branches
            root = self.child_of((), next(iter(self.leaves))[0])
            if isinstance(root, str):
                raise ValueError("the hierarchy has a single leaf: nothing to classify")
        return root


@dataclass
class HierarchicalBundle:
    """A loaded hierarchical bundle: the node tree, its levels and leaf classes."""

    root: HierarchyNode
    levels: list[Level]
    classes: list[str]
    leaf_paths: dict[str, tuple[str, ...]]
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    _groups: list[list[HierarchyNode]] | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "hierarchical"

    @property
    def preprocessing(self):
        return self.root.bundle.preprocessing

    def shared_backbones(self) -> list[list[HierarchyNode]]:
        """Nodes grouped by identical backbone weights and preprocessing (e.g. one frozen ImageNet
        backbone under every node): each group needs one backbone pass per image, then one head per node."""
        if self._groups is None:
            groups: dict[tuple[str, str], list[HierarchyNode]] = {}
            for node in self.nodes():
                key = (json.dumps(node.bundle.preprocessing.to_dict(), sort_keys=True),
                       _fingerprint(node.bundle.model.backbone))
                groups.setdefault(key, []).append(node)
            self._groups = list(groups.values())
        return self._groups

    @torch.inference_mode()
    def node_probabilities(self, images: Sequence[Image.Image], batch_size: int = 32,
                           run_group: Callable[[list[HierarchyNode], torch.Tensor], list[torch.Tensor]] | None = None
                           ) -> dict[str, np.ndarray]:
        """Each node's ``(n_images, classes)`` probabilities; nodes sharing a backbone share its pass.

        ``run_group(nodes, batch)`` replaces the PyTorch backbone + heads (e.g. an ONNX Runtime graph);
        it returns one logits tensor per node.
        """
        out = {}
        for group in self.shared_backbones():
            model = group[0].bundle.model
            transform = build_transforms(model.preprocessing, train=False)
            logits: list[list[torch.Tensor]] = [[] for _ in group]
            for start in range(0, len(images), batch_size):
                x = torch.stack([transform(image) for image in images[start:start + batch_size]])
                if run_group is not None:
                    outputs = run_group(group, x)
                else:
                    features = model.backbone(x.to(next(model.parameters()).device))
                    outputs = [node.bundle.model.head(features).float().cpu() for node in group]
                for store, output in zip(logits, outputs):
                    store.append(output)
            for node, store in zip(group, logits):
                out[node.key] = torch.softmax(torch.cat(store), 1).numpy()
        return out

    def decider(self, node_proba: Mapping[str, np.ndarray], index: int,
                level: int | None = None) -> tuple[HierarchyNode, int]:
        """The node (and its chosen class) that decided image ``index`` at ``level`` of its route
        (default: the last decision)."""
        path = self.route(node_proba, index)
        return path[-1] if level is None else path[min(level, len(path) - 1)]

    def nodes(self) -> Iterator[HierarchyNode]:
        stack = [self.root]
        while stack:
            node = stack.pop(0)
            yield node
            stack.extend(child for child in node.children.values() if isinstance(child, HierarchyNode))

    def leaf_labels(self, frame: pd.DataFrame) -> list[str]:
        """Leaf class of each row from its level columns ('' when its path is not a leaf of this tree)."""
        by_path = {p: name for name, p in self.leaf_paths.items()}
        return [by_path.get(p, "") for p in _paths_of(frame, self.levels)]

    def combine(self, node_proba: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Leaf probabilities (path products) and routed leaf indices from each node's ``(n, classes)`` output."""
        n = len(next(iter(node_proba.values())))
        leaf = np.zeros((n, len(self.classes)))
        routed = np.full(n, -1)

        def walk(node: HierarchyNode, mass: np.ndarray, chosen: np.ndarray) -> None:
            proba = node_proba[node.key]
            best = proba.argmax(1)
            for c, (value, child) in enumerate(node.children.items()):
                here = chosen & (best == c)
                if isinstance(child, HierarchyNode):
                    walk(child, mass * proba[:, c], here)
                else:
                    index = self.classes.index(child)
                    leaf[:, index] = mass * proba[:, c]
                    routed[here] = index

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

    def node_for_class(self, name: str) -> tuple[HierarchyNode, int] | None:
        """The node that decides class ``name`` (a leaf or an intermediate value) and its index there."""
        for node in self.nodes():
            for c, (value, child) in enumerate(node.children.items()):
                if name in (value, child if isinstance(child, str) else None):
                    return node, c
        return None


def _fingerprint(module) -> str:
    """A hash of a module's weights and buffers (equal for copies of one frozen backbone)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _node_spec(tree: HierarchyTree, prefix: tuple[str, ...]) -> dict:
    children = {}
    for value in tree.nodes[prefix]:
        child = tree.child_of(prefix, value)
        children[value] = {"leaf": child} if isinstance(child, str) else _node_spec(tree, child)
    return {"key": tree.node_key(prefix), "prefix": list(prefix), "bundle": f"nodes/{tree.node_key(prefix)}",
            "children": children}


def save_hierarchical_bundle(tree: HierarchyTree, node_bundles: Mapping[tuple[str, ...], str | Path],
                             path: str | Path, meta: dict | None = None) -> Path:
    """Write a self-contained hierarchical bundle at ``path`` from one trained flat bundle per tree node.

    Each node bundle's classes must equal the node's classes of ``tree``. The folder is built aside and
    moved in place, so a crash never leaves half a bundle.
    """
    path = Path(path)
    missing = [p for p in tree.nodes if p not in node_bundles]
    if missing:
        raise ValueError(f"no bundle for tree node(s) {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
    try:
        for prefix, classes in tree.nodes.items():
            source = Path(node_bundles[prefix])
            found = read_bundle_info(source)["classes"]
            if list(found) != list(classes):
                raise ValueError(f"bundle {source} has classes {found}; node {list(prefix) or 'root'} needs {classes}")
            shutil.copytree(source, staging / "nodes" / tree.node_key(prefix))
        info = {"format": BUNDLE_FORMAT, "kind": "hierarchical", "oncolens_version": __version__,
                "levels": [{"name": lv.name, "column": lv.column} for lv in tree.levels],
                "classes": sorted(tree.leaves.values()),
                "leaf_paths": {name: list(p) for p, name in sorted(tree.leaves.items())},
                "tree": _node_spec(tree, tree.root), "meta": meta or {}}
        (staging / "bundle.json").write_text(json.dumps(info, indent=2))
        if path.exists():
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _load_node(root: Path, spec: dict, device) -> HierarchyNode:
    folder = (root / spec["bundle"]).resolve()
    if not folder.is_relative_to(root.resolve()):  # never follow a path out of the bundle folder
        raise ValueError(f"{root}: node bundle path {spec['bundle']!r} leaves the bundle folder")
    bundle = load_bundle(folder, device=device)
    children = {value: (child["leaf"] if "leaf" in child else _load_node(root, child, device))
                for value, child in spec["children"].items()}
    if list(children) != list(bundle.classes):
        raise ValueError(f"{folder}: classes {bundle.classes} do not match the tree's {list(children)}")
    return HierarchyNode(spec["key"], tuple(spec["prefix"]), bundle, children)


def load_hierarchical_bundle(path: str | Path, device: str = "cpu") -> HierarchicalBundle:
    """Load a hierarchical bundle folder written by :func:`save_hierarchical_bundle`."""
    path = Path(path)
    info = read_bundle_info(path)
    if info.get("kind") != "hierarchical":
        raise ValueError(f"{path} is a {info.get('kind', 'flat')} bundle, not a hierarchical one")
    root = _load_node(path, info["tree"], device)
    return HierarchicalBundle(root=root, levels=[Level(**lv) for lv in info["levels"]], classes=list(info["classes"]),
                              leaf_paths={k: tuple(v) for k, v in info["leaf_paths"].items()},
                              meta={**info.get("meta", {}), "oncolens_version": info.get("oncolens_version")},
                              path=path)


def load_any_bundle(path: str | Path, device: str = "cpu") -> Bundle | HierarchicalBundle:
    """A flat or a hierarchical bundle, whichever ``path`` holds."""
    kind = read_bundle_info(path).get("kind", "flat")
    if kind == "hierarchical":
        return load_hierarchical_bundle(path, device=device)
    return load_bundle(path, device=device)


def predict_manifest_hierarchical(bundle: HierarchicalBundle, frame: pd.DataFrame, batch_size: int = 32
                                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, str]]:
    """``(leaf_probabilities, routed_leaf_indices, row_positions, unreadable)`` for the readable rows.

    Every node scores every image (the leaf probabilities need all of them); nodes sharing a backbone
    share its pass.
    """
    node_proba, positions, unreadable = {}, None, {}
    for group in bundle.shared_backbones():
        model = group[0].bundle.model
        probas, positions, unreadable = predict_manifest_heads(
            model.backbone, [node.bundle.model.head for node in group], model.preprocessing, frame, batch_size)
        node_proba.update({node.key: proba for node, proba in zip(group, probas)})
    leaf, routed = bundle.combine(node_proba)
    return leaf, routed, positions, unreadable
