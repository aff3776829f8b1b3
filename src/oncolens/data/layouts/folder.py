"""Class-per-folder at any depth (ImageFolder, Kaggle "Multi Cancer", "Brain Tumor MRI", LC25000)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ...errors import ConfigError
from .base import Candidate, Layout, LayoutOptions, group_from_regex, iter_image_files, register_layout, walk

#: Folder names that say which split a file came from, not what it shows.
SPLIT_FOLDER_NAMES = frozenset({"train", "training", "test", "testing", "val", "valid", "validation", "dev"})


def _label_dirs(root: Path, exclude) -> list[tuple[str, ...]]:
    """Relative folder paths (without split folders) that directly hold files, found without reading images."""
    found = set()
    for _, rel, filenames in walk(root, exclude):
        if filenames and rel:
            found.add(tuple(p for p in rel if p.lower() not in SPLIT_FOLDER_NAMES))
    return sorted(found)


def level_names_for(depth: int, names: tuple[str, ...] | None = None) -> list[str]:
    """Column names for ``depth`` nested label levels (``cancer_type``/``subclass`` for two)."""
    if names:
        if len(names) < depth:
            raise ConfigError(f"{depth} folder levels but only {len(names)} level names given: {names}")
        return list(names[:depth])
    if depth <= 1:
        return []
    if depth == 2:
        return ["cancer_type", "subclass"]
    return [f"level_{i + 1}" for i in range(depth)]


@register_layout("folder")
class FolderLayout(Layout):
    description = "class-per-folder at any depth; the deepest folder is the label"

    def detect(self, root: Path) -> float:
        return 0.1 if root.is_dir() else 0.0

    def _depth(self, root: Path, options: LayoutOptions) -> int:
        return max((len(d) for d in _label_dirs(root, options.exclude)), default=1)

    def columns(self, root: Path, options: LayoutOptions) -> list[str]:
        cols = ["label", *level_names_for(self._depth(root, options), options.level_names), "source_split"]
        if options.group_regex:
            cols.append("group")
        return cols

    def candidates(self, root: Path, options: LayoutOptions) -> Iterator[Candidate]:
        levels = level_names_for(self._depth(root, options), options.level_names)
        problems: list[Candidate] = []
        for path in iter_image_files(root, options.exclude, problems):
            parts = path.relative_to(root).parts[:-1]
            splits = [p for p in parts if p.lower() in SPLIT_FOLDER_NAMES]
            label_parts = [p for p in parts if p.lower() not in SPLIT_FOLDER_NAMES]
            if not label_parts:
                yield Candidate(path, problem="file is not inside a class folder")
                continue
            fields: dict[str, object] = {"label": label_parts[-1], "source_split": splits[0].lower() if splits else ""}
            for name, value in zip(levels, label_parts):
                fields[name] = value
            if options.group_regex:
                fields["group"] = group_from_regex(options.group_regex, path.name) or ""
            yield Candidate(path, fields)
        yield from problems
