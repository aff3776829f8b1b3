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

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BundleError, DataError
from ..files import atomic_folder, atomic_write_json, safe_name
from .bundle import (
    HierarchyNode,
    Level,
    ModelBundle,
    bundle_header,
    load_bundle,
    read_bundle_info,
    register_bundle_kind,
)

if TYPE_CHECKING:  # pandas is imported where a manifest is read, not to predict
    import pandas as pd

__all__ = ["Level", "HierarchyNode", "HierarchicalBundle", "HierarchyTree", "LEVEL_ALIASES", "resolve_levels",
           "leaf_names", "level_names", "save_hierarchical_bundle", "load_hierarchical_bundle"]

#: Level names a user may give instead of a manifest column: the first column present is used.
LEVEL_ALIASES: dict[str, tuple[str, ...]] = {
    "binary": ("tumor_class", "binary"),
    "subtype": ("subtype", "subclass"),
    "organ": ("organ", "cancer_type"),
    "tumor": ("tumor", "subclass", "tumor_class"),
}


def resolve_levels(columns: Sequence[str], levels: Sequence[str]) -> list[Level]:
    """Map level names (a column, or an alias of :data:`LEVEL_ALIASES`) to manifest columns."""
    if len(levels) < 2:
        raise DataError(f"a hierarchy needs at least two levels, got {list(levels)}")
    resolved = []
    for name in levels:
        candidates = (name,) + LEVEL_ALIASES.get(name, ())
        column = next((c for c in candidates if c in columns), None)
        if column is None:
            raise DataError(f"level {name!r}: none of the columns {list(candidates)} is in the manifest "
                             f"({list(columns)})")
        resolved.append(Level(name, column))
    if len({level.column for level in resolved}) != len(resolved):
        raise DataError(f"levels {list(levels)} resolve to repeated columns {[lv.column for lv in resolved]}")
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
        raise DataError("every path must have the same number of levels")
    return level_names(paths, depth.pop())


def _paths_of(frame: pd.DataFrame, levels: Sequence[Level]) -> list[tuple[str, ...]]:
    values = frame[[lv.column for lv in levels]].fillna("").astype(str)
    return [tuple(row) for row in values.itertuples(index=False)]


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
            raise DataError("some rows have an empty value at a level; drop them before building the tree")
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
        if not prefix:
            return "root"
        key = re.sub(r"[^\w.-]+", "_", "__".join(prefix))
        return key if key.strip(".") else safe_name(key)  # '.' or '..' would name the bundle's own folders

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
                raise DataError("the hierarchy has a single leaf: nothing to classify")
        return root


class HierarchicalBundle(ModelBundle):
    """A loaded hierarchical bundle: a tree of flat bundles over ``levels`` with leaf ``classes``."""

    kind = "hierarchical"

    def __init__(self, root: HierarchyNode, levels: list[Level], classes: list[str],
                 leaf_paths: dict[str, tuple[str, ...]], meta: dict | None = None, path: Path | None = None):
        self.root = root
        self.levels = list(levels)
        self.classes = list(classes)
        self.leaf_paths = dict(leaf_paths)
        self.meta = meta or {}
        self.path = path

    def leaf_labels(self, frame: pd.DataFrame) -> list[str]:
        """Leaf class of each row from its level columns ('' when its path is not a leaf of this tree)."""
        return self.labels_of(frame).tolist()


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
        raise BundleError(f"no bundle for tree node(s) {missing}")
    with atomic_folder(path) as staging:
        for prefix, classes in tree.nodes.items():
            source = Path(node_bundles[prefix])
            found = read_bundle_info(source)["classes"]
            if list(found) != list(classes):
                raise BundleError(f"bundle {source} has classes {found}; node {list(prefix) or 'root'} needs {classes}")
            shutil.copytree(source, staging / "nodes" / tree.node_key(prefix))
        info = {**bundle_header("hierarchical", meta),
                "levels": [{"name": lv.name, "column": lv.column} for lv in tree.levels],
                "classes": sorted(tree.leaves.values()),
                "leaf_paths": {name: list(p) for p, name in sorted(tree.leaves.items())},
                "tree": _node_spec(tree, tree.root), "meta": meta or {}}
        atomic_write_json(staging / "bundle.json", info)
    return path


def _load_node(root: Path, spec: dict, device) -> HierarchyNode:
    folder = (root / spec["bundle"]).resolve()
    if not folder.is_relative_to(root.resolve()):  # never follow a path out of the bundle folder
        raise BundleError(f"{root}: node bundle path {spec['bundle']!r} leaves the bundle folder")
    bundle = load_bundle(folder, device=device)
    children = {value: (child["leaf"] if "leaf" in child else _load_node(root, child, device))
                for value, child in spec["children"].items()}
    if list(children) != list(bundle.classes):
        raise BundleError(f"{folder}: classes {bundle.classes} do not match the tree's {list(children)}")
    return HierarchyNode(spec["key"], tuple(spec["prefix"]), bundle, children)


def load_hierarchical_bundle(path: str | Path, device: str = "cpu", info: dict | None = None) -> HierarchicalBundle:
    """Load a hierarchical bundle folder written by :func:`save_hierarchical_bundle`."""
    path = Path(path)
    info = info or read_bundle_info(path)
    if info.get("kind") != "hierarchical":
        raise BundleError(f"{path} is a {info.get('kind', 'flat')} bundle, not a hierarchical one")
    try:
        root = _load_node(path, info["tree"], device)
        levels = [Level(**lv) for lv in info["levels"]]
        leaf_paths = {k: tuple(v) for k, v in info["leaf_paths"].items()}
        classes = info["classes"]
    except (KeyError, TypeError, AttributeError) as exc:
        raise BundleError(f"{path / 'bundle.json'}: missing or malformed field {exc}") from None
    leaves = sorted(child for node in _walk(root) for child in node.children.values() if isinstance(child, str))
    if not isinstance(classes, list) or sorted(map(str, classes)) != leaves or len(set(classes)) != len(classes):
        raise BundleError(f"{path / 'bundle.json'}: classes {classes} do not match the tree's leaves {leaves}")
    if sorted(leaf_paths) != leaves or any(len(p) != len(levels) for p in leaf_paths.values()):
        raise BundleError(f"{path / 'bundle.json'}: leaf_paths do not match the tree's leaves and levels")
    return HierarchicalBundle(root=root, levels=levels, classes=list(classes), leaf_paths=leaf_paths,
                              meta={**info.get("meta", {}), "oncolens_version": info.get("oncolens_version")},
                              path=path)


def _walk(node: HierarchyNode):
    yield node
    for child in node.children.values():
        if isinstance(child, HierarchyNode):
            yield from _walk(child)


register_bundle_kind("hierarchical", lambda path, device, info: load_hierarchical_bundle(path, device, info))
