"""The marks that make a folder an oncolens cache and a folder inside it one of the cache's entries.

``oncolens cache clear`` and the least-recently-used eviction of training remove folders, and they remove
only what the cache made: the cache folder holds :data:`ROOT_MARK` (written when the cache first stores
something there) and every entry folder holds :data:`ENTRY_MARK` (written as the cache creates it, so an
entry never exists without its mark). A folder without its mark (a run folder, a home folder, a cache
written by an oncolens older than the marks) is never counted nor removed, and symbolic links are never
followed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from ..files import _ordinary_mode, atomic_write_text

__all__ = ["ROOT_MARK", "ENTRY_MARK", "mark_cache_root", "is_cache_root", "make_entry", "is_entry", "is_real_folder",
           "remove_entry"]

#: the file that makes a folder an oncolens cache
ROOT_MARK = ".oncolens-cache"
#: the file that makes a folder inside a cache one of its entries
ENTRY_MARK = ".oncolens-cache-entry"


def _read_mark(path: Path) -> dict | None:
    """The JSON of a mark file, or None when ``path`` is not a small regular file (a link is not a mark)."""
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > 4096:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_real_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder itself, not a symbolic link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def is_cache_root(root: str | Path) -> bool:
    """Whether ``root`` holds the cache's own mark."""
    mark = _read_mark(Path(root) / ROOT_MARK)
    return mark is not None and mark.get("oncolens") == "cache"


def mark_cache_root(root: str | Path) -> Path:
    """Make ``root`` (created when missing) an oncolens cache folder; returns it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not is_cache_root(root):
        atomic_write_text(root / ROOT_MARK, json.dumps({
            "oncolens": "cache", "version": 1,
            "about": "oncolens feature and decoded-image cache: `oncolens cache info` lists it, `oncolens cache "
                     "clear` removes its entries (only folders holding " + ENTRY_MARK + ")"}) + "\n")
    return root


def is_entry(folder: str | Path) -> bool:
    """Whether ``folder`` is a real folder (not a link) holding the mark of a cache entry."""
    mark = _read_mark(Path(folder) / ENTRY_MARK)
    return is_real_folder(folder) and mark is not None and mark.get("oncolens") == "cache-entry"


def make_entry(folder: str | Path, content: str) -> Path:
    """The entry folder ``folder``, created with its mark when missing (``content``: "features" or
    "images"). The folder appears with its mark already inside (made aside, then renamed), so a crash never
    leaves an unmarked entry; an existing folder is used as it is."""
    folder = Path(folder)
    if os.path.lexists(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".new"))
    try:
        (staging / ENTRY_MARK).write_text(json.dumps({"oncolens": "cache-entry", "content": content}) + "\n",
                                          encoding="utf-8")
        _ordinary_mode(staging, folder=True)
        try:
            os.rename(staging, folder)
        except OSError:  # made meanwhile by another process (another rank of the same run)
            if not folder.is_dir():
                raise
    finally:
        if os.path.lexists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def remove_entry(folder: str | Path) -> bool:
    """Remove the cache entry ``folder`` if it still is one (a real folder with its mark); whether it is gone.
    Links inside it are removed, never followed; its mark goes last, so an entry that could only be removed
    in part is still an entry (and removable later)."""
    folder = Path(folder)
    if not is_entry(folder):
        return False
    try:
        with os.scandir(folder) as items:
            for item in list(items):
                if item.name == ENTRY_MARK:
                    continue
                if item.is_dir(follow_symlinks=False):
                    shutil.rmtree(item.path)  # does not follow the links inside
                else:
                    os.unlink(item.path)
        os.unlink(folder / ENTRY_MARK)
        os.rmdir(folder)
    except OSError:
        return False
    return True
