"""Train a model from a manifest into a run folder: reproducible, resumable, early-stopped.

Each epoch starts from a seed derived from (seed, epoch) and ends with an atomic checkpoint, so a
run resumed after a crash continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console

from ..data import load_manifest, save_manifest
from ..data import split as split_manifest
from ..distributed import Distributed
from ..errors import ConfigError, DataError, InputNotFound, OutputExists
from ..files import atomic_write_json, atomic_write_text
from .callbacks import CALLBACKS, DEFAULT_CALLBACKS, Callback, EpochFunction, EpochState, plot_training_curves
from .checkpoint import load_best, load_checkpoint
from .config import TrainConfig, load_config
from .loop import Loop
from .planner import resolve_config
from .seeding import run_state, seed_everything
from .stages import STAGES, stage_names
from .tasks import grouped, grouped_split, plan_run, task_for

__all__ = ["RunResult", "EpochState", "train", "resume", "prepare_splits", "resolve_config", "seed_everything",
           "run_state", "plot_training_curves"]


@dataclass
class RunResult:
    run_dir: Path
    bundle_path: Path
    history: pd.DataFrame
    best_epoch: int
    val_loss: float
    val_accuracy: float
    classes: list[str]
    config: TrainConfig


def prepare_splits(frame: pd.DataFrame, config: TrainConfig) -> tuple[pd.DataFrame, str | None]:
    """The manifest with train/val(/test) splits: kept if present, else made; a validation part carved from
    the training rows when there is none. New parts are grouped by patient, or without patient ids as
    ``config.group_by`` says (look-alike groups by default: the bundle is calibrated on the validation
    part, which must not hold look-alikes of training images). Also: what the grouping was, when made."""
    if "split" not in frame.columns or (frame["split"] == "").all():
        return grouped_split(frame, config, test=config.test_fraction, val=config.val_fraction)
    if (frame["split"] == "val").any():
        return frame, None
    train_part = frame[frame["split"] == "train"]
    grouping = grouped(train_part, config)
    carved = split_manifest(grouping.frame, test=config.val_fraction, val=0.0, seed=config.seed,
                            label_col=config.label_col, group_col=grouping.column)
    frame = frame.copy()
    frame.loc[train_part.index, "split"] = carved["split"].replace({"test": "val"}).to_numpy()
    return frame, f"validation part: {grouping.sentence}"


def _console(console: Console | None, dist: Distributed) -> Console:
    return (console or Console(width=120)) if dist.is_main else Console(quiet=True)


def _loop(config: TrainConfig, frame: pd.DataFrame, callbacks: Sequence[Callback | Callable[[EpochState], None]],
          console: Console, dist: Distributed) -> Loop:
    """The run's parts, stages and callbacks (the run's own, then the caller's) in one loop."""
    names = stage_names(config)
    run = task_for(frame).build(config, frame, names, console, dist)
    stages = [STAGES.get(name)(run) for name in names]
    hooks = ([CALLBACKS.get(name)() for name in DEFAULT_CALLBACKS]
             + [c if isinstance(c, Callback) else EpochFunction(c) for c in callbacks])
    return Loop(run, stages, hooks, console, dist)


def _restore_best_losses(loop: Loop) -> None:
    """A run resumed from a checkpoint that did not keep the best epoch's per-input validation losses: they
    are computed again from ``best.safetensors``, so the resumed run decides as the uninterrupted one."""
    state = loop.state
    if state.best_losses is not None or state.best_stage is None or not (state.run_dir / "best.safetensors").exists():
        return
    stage = next((s for s in state.stages if s.name == state.best_stage), None)
    if stage is None:
        return
    current = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
    load_best(state)
    state.best_losses = loop.validate(stage)[2]
    state.model.load_state_dict(current)


def _finish(loop: Loop, stopped: bool) -> RunResult:
    """The best weights, validated again, become the bundle; the callbacks write and report the rest."""
    state = loop.state
    if not (state.run_dir / "best.safetensors").exists():
        raise DataError(f"no epoch of {state.run_dir} reached a finite validation loss, so there is no model to "
                        "save; lower the learning rate or check the validation images")
    load_best(state)
    val_loss, val_acc, _ = loop.validate()
    history = pd.DataFrame(state.history)
    run = state.run
    metrics = {"best_epoch": state.best_epoch + 1, "best_stage": state.best_stage, "epochs_run": len(history),
               "stopped_early": stopped, "val_loss": val_loss, "val_accuracy": val_acc,
               "n_train": len(run.train_set), "n_val": len(run.val_set), "feature_cache": state.stage.inputs.cached,
               "train_seconds": float(history["seconds"].sum()) if len(history) else 0.0,
               "unreadable_files": {**run.train_set.bad_files, **run.val_set.bad_files}, **run.extra_metrics}
    state.bundle = next(made for made in loop.event("on_train_end", metrics) if made is not None)
    for added in loop.event("on_bundle", state.bundle, metrics):  # calibration adds its report
        metrics.update(added or {})
    loop.event("on_finish", metrics)  # metrics.json, curves, tracking
    console = state.console
    console.print(f"best epoch {state.best_epoch + 1} ({state.best_stage}): val_accuracy {val_acc:.4f}  "
                  f"val_loss {val_loss:.4f}")
    guess = math.log(max(len(state.classes), 2))  # the loss of predicting every class alike
    if math.isfinite(val_loss) and val_loss > 10 * guess:
        console.print(f"warning: the best validation loss {val_loss:.3g} is over 10x that of guessing ({guess:.3g}): "
                      f"this model is not usable as it is; check --lr ({state.config.lr:g}) and the data",
                      style="bold yellow", markup=False, highlight=False)
    console.print(f"bundle: {state.bundle.path}")
    return RunResult(run_dir=state.run_dir, bundle_path=state.bundle.path, history=history,
                     best_epoch=state.best_epoch + 1, val_loss=val_loss, val_accuracy=val_acc, classes=state.classes,
                     config=state.config)


def train(config: TrainConfig, callbacks: Sequence[Callback | Callable[[EpochState], None]] = (),
          console: Console | None = None, distributed: Distributed | None = None) -> RunResult | None:
    """Train on ``config.data`` into ``runs_dir/name``; return where everything went.

    With ``recipe: auto`` every option left unset is chosen from the training images' fingerprint
    (:func:`~oncolens.training.recipe.configure`); the choices and reasons are printed, written as comments
    in ``config.yaml`` and in ``recipe.json``.

    Under torchrun (``distributed``, default: the process group this process has joined) every rank runs
    this; rank 0 alone writes the run folder and returns the result, the others return None.
    """
    if not config.data:
        raise ConfigError("no data: set `data` to a manifest CSV (from `oncolens scan` / `oncolens split`)")
    frame, grouping = prepare_splits(load_manifest(config.data), config)
    plan = plan_run(config, frame)  # every option settled once, with its reason
    config, recipe = _absolute_files(plan.config), plan.recipe
    dist = distributed or Distributed.current()
    config.name = dist.broadcast(config.name)  # a name made from the clock: rank 0's
    run_dir = config.run_dir
    exists = (run_dir / "checkpoint.pt").exists()
    dist.barrier()  # every rank has looked before rank 0 writes
    if exists:
        raise OutputExists(f"{run_dir} already holds a run; resume it with --resume {run_dir} or pick another --name")
    out = _console(console, dist)
    if dist.is_main:
        from .tracking import check_trackers

        check_trackers(config.tracking, Path(config.runs_dir), run_dir)  # refused before the run folder exists
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise ConfigError(f"cannot make the run folder {run_dir} ({exc.filename}: permission denied): choose "
                              "a writable --runs-dir") from None
        save_manifest(frame, run_dir / "splits.csv")
        if grouping:
            out.print(f"split: {grouping}", markup=False, highlight=False)
            atomic_write_text(run_dir / "grouping.txt", grouping)
    if recipe is not None and recipe.fingerprint is not None and dist.is_main:
        out.print(f"data: {recipe.fingerprint.summary()}", markup=False, highlight=False)
        seconds = recipe.estimated_seconds
        estimate = f" (estimated {seconds / 60:.1f} min on 2 CPU cores)" if seconds and seconds >= 60 else (
            f" (estimated {seconds:.0f} s on 2 CPU cores)" if seconds else "")
        out.print(f"recipe: {len(recipe.reasons)} option(s) chosen from the data{estimate}; any flag overrides",
                  markup=False)
        for line in recipe.lines():
            out.print(f"  {line}", markup=False, highlight=False)
        atomic_write_json(run_dir / "recipe.json", plan.to_dict())
    if dist.is_main:
        atomic_write_text(run_dir / "config.yaml", config.to_yaml(comments=plan.reasons))
    with run_state(config):
        seed_everything(config.seed)
        loop = _loop(config, frame, callbacks, out, dist)
        if dist.is_main:
            atomic_write_json(run_dir / "classes.json", loop.state.classes)
        stopped = loop.fit()
        return _finish(loop, stopped) if dist.is_main else None


def _absolute_files(config: TrainConfig) -> TrainConfig:
    """``config`` with the files it reads again on ``--resume`` (weights, the stain target, the cache folder) named
    by absolute paths, so that its run resumes from any folder; names of files that do not exist stay as given."""
    import dataclasses

    changes = {}
    if config.weights not in ("auto", "random", "imagenet", "") and Path(config.weights).exists():
        changes["weights"] = str(Path(config.weights).resolve())
    method, _, target = (config.stain_norm or "").partition(":")
    if target and Path(target).exists():
        changes["stain_norm"] = f"{method}:{Path(target).resolve()}"
    if config.cache_dir:
        changes["cache_dir"] = str(Path(config.cache_dir).resolve())
    return dataclasses.replace(config, **changes) if changes else config


def resume(run_dir: str | Path, callbacks: Sequence[Callback | Callable[[EpochState], None]] = (),
           console: Console | None = None, epochs: int | None = None,
           distributed: Distributed | None = None) -> RunResult | None:
    """Continue a run from its last checkpoint, with the configuration and splits it started with.

    ``epochs`` extends (or shortens) the run; nothing else of the configuration can change. A distributed
    run resumes under torchrun with any number of ranks (every rank reads rank 0's checkpoint).
    """
    dist = distributed or Distributed.current()
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").exists():
        raise InputNotFound(f"{run_dir} is not a run folder (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    config.runs_dir, config.name = str(run_dir.parent), run_dir.name
    if epochs is not None and epochs != config.epochs:
        config = load_config(None, **{**config.to_dict(), "epochs": epochs})
        dist.barrier()  # every rank has read the old configuration
        if dist.is_main:
            atomic_write_text(run_dir / "config.yaml", config.to_yaml())
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists() and (run_dir / "history.csv").exists():
        raise DataError(f"{checkpoint} is missing although {run_dir} has finished epochs: it cannot resume where it "
                        "stopped. Start the run again under another --name, or delete the folder.")
    out = _console(console, dist)
    with run_state(config):
        seed_everything(config.seed)
        loop = _loop(config, load_manifest(run_dir / "splits.csv"), callbacks, out, dist)
        if checkpoint.exists():
            load_checkpoint(loop.state)
            _restore_best_losses(loop)
            history = loop.state.history
            out.print(f"resuming {run_dir} after epoch {history[-1]['epoch'] if history else 0}")
        else:
            out.print(f"{run_dir} stopped before its first epoch ended: starting it from epoch 1")
        stopped = loop.fit()
        return _finish(loop, stopped) if dist.is_main else None
