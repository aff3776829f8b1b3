"""Atomic file writes: a crash leaves the old file or the new one, never half of one.

Every file a later step trusts (manifests, ``metrics.json``, ``explanations.json``, bundles, export
sidecars, checkpoints, feature-cache shards, done markers) is written through :func:`atomic_write`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_folder", "atomic_write", "atomic_write_bytes", "atomic_write_text",
           "atomic_write_json", "RowLog", "read_rows", "safe_name", "inside"]


def _umask() -> int:
    """The process's umask, read without changing it (Linux: /proc; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _ordinary_mode(path: str | Path, folder: bool = False) -> None:
    """Give a file made by ``mkstemp`` (0600) or a folder made by ``mkdtemp`` (0700) the mode an ordinary
    ``open()`` / ``mkdir()`` would: 0666 / 0777 less the umask, so bundles can be shared with a group."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


#: names Windows reserves whatever the extension (a folder named ``CON`` cannot be copied there)
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
_UNSAFE = set('/\\:*?"<>|')


def safe_name(text: object, max_chars: int = 80) -> str:
    """A file or folder name made from a label, file stem, slide name or id: readable, never a path.

    Path separators, control characters (NUL included), characters Windows forbids and undecodable bytes
    become ``_``; ``.``/``..``, empty names and Windows device names (``CON``, ``NUL`` ...) are escaped;
    long names are cut. Whenever the name had to change, a short hash of the original is appended, so two
    different originals never share a name (unique by construction; keep the original in the manifest).
    """
    original = str(text)
    chars = []
    for ch in original:
        code = ord(ch)
        chars.append("_" if ch in _UNSAFE or code < 32 or code == 127 or 0xD800 <= code <= 0xDFFF else ch)
    name = "".join(chars).strip().strip(".")
    if not name:
        name = "_"
    if name.split(".")[0].lower() in _RESERVED:
        name = "_" + name
    if len(name) > max_chars:
        name = name[:max_chars]
    if name != original:
        digest = hashlib.sha256(original.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        name = f"{name}-{digest}"
    return name


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved, after checking it lies inside ``root`` (a bug otherwise: names go through
    :func:`safe_name` first)."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise RuntimeError(f"refusing to write {resolved}: outside {base}")
    return resolved


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``: write it inside the block; on success it is fsynced and
    renamed over ``path``, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        _ordinary_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A staging folder beside ``path``: fill it inside the block; on success it replaces ``path`` (an
    existing folder is moved aside first and removed after), on failure it is removed: a crash never
    leaves half a folder at ``path``."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
    _ordinary_mode(staging, folder=True)
    try:
        yield staging
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
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on every platform / file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: Any) -> Path:
    """Write ``value`` as indented JSON atomically (non-JSON numbers such as numpy floats as floats)."""
    return atomic_write_text(path, json.dumps(value, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return float(value)


class RowLog:
    """A CSV or JSON-lines table written row by row into ``<path>.partial`` and renamed to ``path`` when
    complete: a killed run leaves the rows it finished, and ``resume=True`` continues after them.

    Rows are flushed per :meth:`write` call (a batch); a torn last line from a kill is dropped on resume.
    ``key`` names the column that identifies a row (e.g. the image path): :attr:`done` holds the keys
    already written. ``keep(row)`` (on resume) drops the rows written before that no longer hold (e.g. whose
    own output file is gone): their inputs count as not done.
    """

    def __init__(self, path: str | Path, fields: list[str], key: str, resume: bool = False,
                 keep: Callable[[dict], bool] | None = None):
        self.path, self.fields, self.key, self.keep = Path(path), list(fields), key, keep
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.jsonl = self.path.suffix == ".jsonl"
        self.done: set[str] = set()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume and self.path.exists() and not self.partial.exists():
            os.replace(self.path, self.partial)  # finished before: its rows count as done, nothing is redone
        if resume and self.partial.exists():
            self._recover()
        else:
            self.partial.unlink(missing_ok=True)
        fresh = not self.partial.exists()
        self._handle = open(self.partial, "a", newline="", encoding="utf-8")
        if not self.jsonl:
            import csv

            self._writer = csv.DictWriter(self._handle, fieldnames=self.fields, extrasaction="ignore")
            if fresh:
                self._writer.writeheader()
                self._handle.flush()

    def _recover(self) -> None:
        """Keep the complete lines of the partial file (and their keys); drop a torn last line."""
        data = self.partial.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if len(complete) != len(data):
            with open(self.partial, "r+b") as handle:
                handle.truncate(len(complete))
        import csv
        import io

        from .errors import DataError, OutputExists

        try:
            text = complete.decode("utf-8")
            if self.jsonl:
                rows: Any = (json.loads(line) for line in text.splitlines() if line.strip())
            else:
                rows = csv.DictReader(io.StringIO(text))
                if rows.fieldnames and list(rows.fieldnames) != self.fields:
                    raise OutputExists(f"{self.partial} has other columns than this run writes: delete it or run "
                                       "without --resume")
            if self.keep is not None:
                rows = list(rows)
            self.done = {str(row[self.key]) for row in rows}
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{self.partial} is not a file this run wrote ({type(exc).__name__}): delete it or run "
                            "without --resume") from None
        if self.keep is None:
            return
        kept = [row for row in rows if self.keep(row)]
        if len(kept) < len(rows):  # rewritten (atomically) without the rows that no longer hold
            def write(tmp: Path) -> None:
                with open(tmp, "w", newline="", encoding="utf-8") as handle:
                    if self.jsonl:
                        handle.writelines(json.dumps(row, default=_jsonable) + "\n" for row in kept)
                    else:
                        writer = csv.DictWriter(handle, fieldnames=self.fields)
                        writer.writeheader()
                        writer.writerows(kept)

            atomic_write(self.partial, write)
            self.done = {str(row[self.key]) for row in kept}

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            if self.jsonl:
                self._handle.write(json.dumps(row, default=_jsonable) + "\n")
            else:
                self._writer.writerow(row)
            self.done.add(str(row[self.key]))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self, complete: bool = True) -> None:
        """Close; when ``complete``, move the rows to ``path`` (atomically)."""
        self._handle.close()
        if complete:
            os.replace(self.partial, self.path)
            _fsync_dir(self.path.parent)

    def rows(self) -> Iterator[dict]:
        """The rows written so far, in order (reads the file)."""
        return read_rows(self.path if self.path.exists() and not self.partial.exists() else self.partial)


def read_rows(path: str | Path) -> Iterator[dict]:
    """The rows of a CSV (strings) or JSON-lines file, one at a time."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        if path.suffix == ".jsonl" or path.name.endswith(".jsonl.partial"):
            yield from (json.loads(line) for line in handle if line.strip())
        else:
            import csv

            yield from csv.DictReader(handle)
