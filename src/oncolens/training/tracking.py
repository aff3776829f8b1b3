"""Run tracking: a training run's parameters, per-epoch metrics and artefacts logged to TensorBoard
(``<run>/tb``) and/or MLflow (default store: ``<runs-dir>/mlflow.db``, SQLite).

Both are optional extras (``pip install 'oncolens[tracking]'``); without them training works unchanged.
A tracker is added in one place: subclass :class:`Tracker` and :func:`register_tracker` it.

A store that cannot keep the records (an unwritable runs folder, a read-only or damaged ``mlflow.db``, a full
disk) is refused by :func:`check_trackers` before the run folder is made: one :class:`ConfigError` naming the
file and what to do, and nothing left behind.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["Tracker", "TRACKERS", "register_tracker", "open_trackers", "check_trackers", "available"]


class Tracker:
    """Receives one run's parameters, epochs and artefacts (rank 0 only)."""

    name = "base"
    module = ""  # the package it needs

    def __init__(self, run_dir: Path, runs_dir: Path, run_name: str):
        self.run_dir, self.runs_dir, self.run_name = run_dir, runs_dir, run_name

    @classmethod
    def store(cls, run_dir: Path, runs_dir: Path) -> Path:
        """Where this tracker keeps its records (named in errors)."""
        return run_dir

    @classmethod
    def check_store(cls, runs_dir: Path) -> None:
        """Raise (any exception) when the records could not be kept under ``runs_dir``; called before the
        run folder exists. Trackers that write inside the run folder have nothing to check."""

    def params(self, params: dict) -> None:
        pass

    def epoch(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def finish(self, metrics: dict[str, float], artefacts: Iterable[Path]) -> None:
        pass


#: name -> tracker class
TRACKERS: Registry[type[Tracker]] = Registry("tracker")


def register_tracker(cls: type[Tracker], override: bool = False) -> type[Tracker]:
    """Make a :class:`Tracker` available by its ``name`` (usable as a class decorator)."""
    return TRACKERS.register(cls.name, cls, override)


def available(name: str) -> bool:
    """Whether the package ``name``'s tracker needs is installed."""
    return importlib.util.find_spec(TRACKERS[name].module) is not None


def _numbers(values: dict) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[key] = float(value)
    return out


@register_tracker
class TensorBoard(Tracker):
    name, module = "tensorboard", "tensorboard"

    @classmethod
    def store(cls, run_dir: Path, runs_dir: Path) -> Path:
        return run_dir / "tb"

    def __init__(self, run_dir: Path, runs_dir: Path, run_name: str):
        super().__init__(run_dir, runs_dir, run_name)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"))

    def params(self, params: dict) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", "| option | value |\n|---|---|\n" + rows, 0)
        self._params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}

    def epoch(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in _numbers(metrics).items():
            group = "loss" if key.endswith("loss") else "accuracy" if key.endswith("accuracy") else "other"
            self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.flush()

    def finish(self, metrics: dict[str, float], artefacts: Iterable[Path]) -> None:
        final = {f"final/{k}": v for k, v in _numbers(metrics).items()}
        if final:
            self.writer.add_hparams(getattr(self, "_params", {}), final, run_name=".")
        self.writer.close()


@register_tracker
class MLflow(Tracker):
    name, module = "mlflow", "mlflow"

    @classmethod
    def store(cls, run_dir: Path, runs_dir: Path) -> Path:
        return runs_dir / "mlflow.db"  # MLflow no longer takes the plain file store by default: SQLite

    @classmethod
    def _experiment(cls, runs_dir: Path):
        """A client of the store under ``runs_dir`` and the id of its ``oncolens`` experiment (both made
        when missing)."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{cls.store(runs_dir, runs_dir).resolve()}")
        experiment = client.get_experiment_by_name("oncolens")
        return client, experiment.experiment_id if experiment else client.create_experiment(
            "oncolens", artifact_location=(runs_dir / "mlflow-artifacts").resolve().as_uri())

    @classmethod
    def check_store(cls, runs_dir: Path) -> None:
        runs_dir.mkdir(parents=True, exist_ok=True)
        cls._experiment(runs_dir)  # opens (or makes) the database and writes to it

    def __init__(self, run_dir: Path, runs_dir: Path, run_name: str):
        super().__init__(run_dir, runs_dir, run_name)
        self.client, experiment_id = self._experiment(runs_dir)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name,
                                             tags={"run_dir": str(run_dir)}).info.run_id

    def params(self, params: dict) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:500]) for k, v in params.items()])

    def epoch(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in _numbers(metrics).items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def finish(self, metrics: dict[str, float], artefacts: Iterable[Path]) -> None:
        for key, value in _numbers(metrics).items():
            self.client.log_metric(self.run_id, f"final_{key}", value)
        for path in artefacts:
            if path.exists():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id)


def _named(setting: str) -> list[str]:
    """The trackers ``setting`` names (``auto``: TensorBoard when installed), checked to exist and be installed."""
    setting = (setting or "none").strip().lower()
    if setting == "none":
        return []
    if setting == "auto":
        return ["tensorboard"] if available("tensorboard") else []
    names = [n.strip() for n in setting.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"unknown tracking {unknown}; choose from auto, none, {', '.join(TRACKERS)}")
    missing = [n for n in names if not available(n)]
    if missing:
        raise ConfigError(f"tracking with {', '.join(missing)} needs its package: pip install 'oncolens[tracking]'")
    return names


def check_trackers(setting: str, runs_dir: Path, run_dir: Path | None = None) -> None:
    """Refuse, before a run folder is made, the trackers ``setting`` names when they are unknown, not
    installed, or cannot keep their records under ``runs_dir``: one :class:`ConfigError` naming the file and
    what to do (only the tracker's own store, e.g. ``mlflow.db``, may be made here)."""
    for name in _named(setting):
        try:
            TRACKERS[name].check_store(Path(runs_dir))
        except Exception as exc:
            error = _store_error(name, Path(runs_dir), run_dir or Path(runs_dir), exc)
            if error is exc:
                raise
            raise error from None


def open_trackers(setting: str, run_dir: Path, runs_dir: Path, run_name: str) -> list[Tracker]:
    """The trackers ``setting`` names (comma-separated; ``auto`` = TensorBoard when installed, ``none``)."""
    trackers = []
    for name in _named(setting):
        try:
            trackers.append(TRACKERS[name](run_dir, runs_dir, run_name))
        except Exception as exc:  # an unwritable folder or a read-only store: a clear line, not a traceback
            error = _store_error(name, runs_dir, run_dir, exc)
            if error is exc:
                raise
            raise error from None
    return trackers


#: (words in a store's error, what is wrong with the file, what to do)
_STORE_PROBLEMS = (
    (("readonly", "read-only", "read only", "permission", "access is denied"), "it is read-only or its folder is "
     "not writable", "make it and its folder writable, or choose another --runs-dir"),
    (("not a database", "malformed", "file is encrypted"), "it is not a usable SQLite database (damaged, or another "
     "kind of file)", "move it away (a new one is made) or choose another --runs-dir"),
    (("unable to open database", "no such file or directory", "not a directory", "is a directory"),
     "it cannot be opened or made there", "choose a writable --runs-dir"),
    (("disk is full", "no space left", "disk i/o", "quota"), "the disk is full or failing", "free some space"),
    (("database is locked",), "another process holds it locked", "wait for that process or stop it"),
)


def _store_error(name: str, runs_dir: Path, run_dir: Path, exc: BaseException) -> BaseException:
    """``exc`` (raised while a tracker opened or checked its store) as one line naming the file and what
    to do, without the database library's text; ``exc`` itself when it is not about the store (a bug)."""
    if isinstance(exc, ConfigError):
        return exc
    store = TRACKERS[name].store(run_dir, runs_dir)
    text = f"{type(exc).__name__} {exc} {exc.__cause__ or ''} {exc.__context__ or ''}".lower()
    found = next(((what, todo) for words, what, todo in _STORE_PROBLEMS if any(w in text for w in words)), None)
    if isinstance(exc, OSError) and exc.filename and Path(exc.filename) != store:  # e.g. the runs folder itself
        found = (f"{exc.filename}: {(exc.strerror or type(exc).__name__).lower()}", "choose a writable --runs-dir")
    elif found is None and isinstance(exc, OSError):
        found = (f"it cannot be written ({(exc.strerror or type(exc).__name__).lower()})", "choose a writable "
                 "--runs-dir")
    elif found is None and any(w in text for w in ("operationalerror", "databaseerror", "sqlite")):
        found = ("its database answered an error", "move it away (a new one is made) or choose another --runs-dir")
    if found is None:
        return exc
    where = f"at {store}" if store.suffix else f"in {store}"
    return ConfigError(f"--tracking {name} cannot keep its records {where}: {found[0]}; {found[1]}, or train "
                       "with --tracking none")
