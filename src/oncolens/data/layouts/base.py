"""The layout registry: one class per way a dataset can be laid out on disk."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError
from ...registry import Registry
from ..imageio import IMAGE_EXTENSIONS

__all__ = [
    "LayoutOptions",
    "Layout",
    "Candidate",
    "register_layout",
    "get_layout",
    "list_layouts",
    "detect_layout",
    "iter_image_files",
    "expand_image_paths",
    "walk",
    "MASK_SUFFIX",
]

#: A file named ``<stem>.mask.png`` beside an image is that image's lesion mask, never an image.
MASK_SUFFIX = ".mask.png"


@dataclass(frozen=True)
class LayoutOptions:
    """What a user can tell a layout beyond the root folder."""

    exclude: tuple[str, ...] = ()
    group_regex: str | None = None
    path_col: str = "path"
    label_col: str = "label"
    group_col: str | None = None
    level_names: tuple[str, ...] | None = None


@dataclass
class Candidate:
    """One file a layout found, with the labels it could read without opening the image."""

    path: Path
    fields: dict[str, object] = field(default_factory=dict)
    #: set when the layout already knows the file is unusable (e.g. a CSV row pointing nowhere)
    problem: str | None = None


class Layout:
    """Base class: subclasses list candidate files and the columns they fill."""

    name: str = ""
    description: str = ""

    def detect(self, root: Path) -> float:
        """How well this layout fits ``root``: 0 (not at all) to 1 (certain)."""
        return 0.0

    def columns(self, root: Path, options: LayoutOptions) -> list[str]:
        """The label/metadata columns this layout fills, in manifest order."""
        return ["label"]

    def candidates(self, root: Path, options: LayoutOptions) -> Iterator[Candidate]:
        raise NotImplementedError


_LAYOUTS: Registry[Layout] = Registry("layout")


def register_layout(name: str, override: bool = False):
    """Class decorator: make a :class:`Layout` subclass available by ``name``."""

    def decorator(cls: type[Layout]) -> type[Layout]:
        cls.name = name
        _LAYOUTS.register(name, cls(), override)
        return cls

    return decorator


def get_layout(name: str) -> Layout:
    if name not in _LAYOUTS:  # "auto" is the scan's own choice, not a layout
        raise ConfigError(f"unknown layout {name!r}; choose one of: auto, {', '.join(sorted(_LAYOUTS.names()))}")
    return _LAYOUTS.get(name)


def list_layouts() -> list[str]:
    return sorted(_LAYOUTS.names())


def detect_layout(root: Path) -> Layout:
    """The registered layout that fits ``root`` best (``folder`` when none is specific)."""
    scores = {name: layout.detect(root) for name, layout in _LAYOUTS.items()}
    best = max(scores, key=lambda n: (scores[n], n == "folder"))
    return _LAYOUTS[best] if scores[best] > 0 else _LAYOUTS["folder"]


def _excluded(rel_parts: Sequence[str], exclude: Sequence[str]) -> bool:
    lowered = {e.lower() for e in exclude}
    return any(part.lower() in lowered for part in rel_parts)


def walk(root: Path, exclude: Sequence[str] = (), problems: list[Candidate] | None = None
         ) -> Iterator[tuple[Path, tuple[str, ...], list[str]]]:
    """``(folder, its parts below root, file names)`` for every folder under ``root``, sorted, hidden and
    excluded folders skipped. Linked folders are followed (each real folder once, so a link loop ends);
    a folder that cannot be read and a file name that is not valid UTF-8 are appended to ``problems``
    (when given) as candidates with the reason, never dropped in silence."""
    seen: set[str] = set()

    def on_error(exc: OSError) -> None:
        if problems is not None:
            problems.append(Candidate(Path(exc.filename or root), problem=f"cannot read folder ({exc.strerror or exc})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back to a folder already walked
            dirnames[:] = []
            continue
        seen.add(real)
        rel = Path(dirpath).relative_to(root).parts
        kept = []
        for d in sorted(dirnames):
            if d.startswith(".") or _excluded((*rel, d), exclude):
                continue
            try:
                d.encode("utf-8")
            except UnicodeEncodeError:  # its files could not be named in a manifest: reported, not walked
                if problems is not None:
                    shown = d.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    problems.append(Candidate(Path(dirpath) / d, problem=f"folder name is not valid UTF-8 "
                                                                          f"({shown!r}); rename the folder"))
                continue
            kept.append(d)
        dirnames[:] = kept
        names = []
        for name in sorted(filenames):
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                if problems is not None and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                    shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                    problems.append(Candidate(Path(dirpath) / name,
                                              problem=f"file name is not valid UTF-8 ({shown!r}); rename the file"))
                continue
            names.append(name)
        yield Path(dirpath), rel, names


def iter_image_files(root: Path, exclude: Sequence[str] = (), problems: list[Candidate] | None = None) -> Iterator[Path]:
    """Image files under ``root`` in a stable order, skipping hidden files, masks and excluded folders
    (see :func:`walk` for links, unreadable folders and file names)."""
    for folder, _, names in walk(root, exclude, problems):
        for name in names:
            if name.startswith(".") or name.lower().endswith(MASK_SUFFIX):
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                yield folder / name


def expand_image_paths(items: Sequence[Path]) -> list[Path]:
    """Files as given and the image files under each folder (:func:`iter_image_files`), in order."""
    paths: list[Path] = []
    for item in items:
        paths.extend(iter_image_files(item) if Path(item).is_dir() else [Path(item)])
    return paths


def sample_files(root: Path, limit: int = 200) -> list[Path]:
    files = []
    for path in iter_image_files(root):
        files.append(path)
        if len(files) >= limit:
            break
    return files


def fit_by_names(root: Path, fits: Callable[[Path], bool]) -> float:
    """How well a layout known by its file names fits ``root`` (:meth:`Layout.detect`): 0.9 times the share of
    sampled images (:func:`sample_files`) that ``fits`` accepts when over half do, else 0 (as for no images)."""
    if not root.is_dir():
        return 0.0
    files = sample_files(root)
    if not files:
        return 0.0
    share = sum(bool(fits(path)) for path in files) / len(files)
    return 0.9 * share if share > 0.5 else 0.0


def group_from_regex(regex: str | None, text: str) -> str | None:
    """First match of ``regex`` in ``text`` (group 1 when the pattern has one)."""
    if not regex:
        return None
    match = re.search(regex, text)
    if not match:
        return None
    return match.group(1) if match.groups() else match.group(0)
