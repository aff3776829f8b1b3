"""Run tracking: a training run's parameters, per-epoch metrics and artefacts logged to TensorBoard
(``<run>/tb``) and/or MLflow (default store: ``<runs-dir>/mlflow.db``, SQLite).

Both are optional extras (``pip install 'oncolens[tracking]'``); without them training works unchanged.
A tracker is added in one place: subclass :class:`Tracker` and :func:`register_tracker` it.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError
from ..registry import Registry

__all__ = ["Tracker", "TRACKERS", "register_tracker", "open_trackers", "available"]


class Tracker:
    """Receives one run's parameters, epochs and artefacts (rank 0 only)."""

    name = "base"
    module = ""  # the package it needs

    def __init__(self, run_dir: Path, runs_dir: Path, run_name: str):
        self.run_dir, self.runs_dir, self.run_name = run_dir, runs_dir, run_name

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

    def __init__(self, run_dir: Path, runs_dir: Path, run_name: str):
        super().__init__(run_dir, runs_dir, run_name)
        from mlflow.tracking import MlflowClient

        # MLflow no longer takes the plain file store by default: a SQLite file beside the runs
        self.uri = f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self.client.get_experiment_by_name("oncolens")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            "oncolens", artifact_location=(runs_dir / "mlflow-artifacts").resolve().as_uri())
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


def open_trackers(setting: str, run_dir: Path, runs_dir: Path, run_name: str) -> list[Tracker]:
    """The trackers ``setting`` names (comma-separated; ``auto`` = TensorBoard when installed, ``none``)."""
    setting = (setting or "none").strip().lower()
    if setting == "none":
        return []
    if setting == "auto":
        return [TRACKERS["tensorboard"](run_dir, runs_dir, run_name)] if available("tensorboard") else []
    names = [n.strip() for n in setting.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"unknown tracking {unknown}; choose from auto, none, {', '.join(TRACKERS)}")
    missing = [n for n in names if not available(n)]
    if missing:
        raise ConfigError(f"tracking with {', '.join(missing)} needs its package: pip install 'oncolens[tracking]'")
    trackers = []
    for n in names:
        try:
            trackers.append(TRACKERS[n](run_dir, runs_dir, run_name))
        except Exception as exc:  # an unwritable folder or a read-only store: said before training, not after
            if isinstance(exc, ConfigError) or not _is_storage_error(exc):
                raise
            raise ConfigError(f"--tracking {n} cannot keep its records under {runs_dir} "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); make the folder writable "
                              "or use --tracking none") from None
    return trackers


def _is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` (from a tracker's store) means the files cannot be written: permissions, a read-only
    database, a damaged one, a full disk (MLflow wraps SQLAlchemy's errors in its own exception types)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return isinstance(exc, OSError) or any(word in text for word in ("readonly", "read-only", "permission",
                                                                     "unable to open database", "disk",
                                                                     "operationalerror", "not a database"))
