"""What happens around the training loop, as callbacks: the history file, TensorBoard/MLflow, the checkpoint,
the bundle, its calibration, the model card, metrics.json, the curves figure, mixup, and a user's per-epoch
function.

Each callback receives the loop's typed state (:class:`~.state.LoopState`) and returns what it produces.
The loop calls, in list order: ``on_start(state)`` once; per stage ``on_stage_start(state, stage)`` and
``on_stage_end(state, stage)``; per gradient step ``on_batch(state, batch) -> batch`` (it may change the
batch: mixup) and ``on_batch_end(state, batch, loss)``; ``on_epoch_end(state, row, epoch)`` after every epoch
of every stage (``row`` is the history row, already in ``state.history``); once the stages are done and the
best weights are back in the model: ``on_train_end(state, metrics) -> BundleInfo`` (the bundle callback
writes the bundle), ``on_bundle(state, bundle, metrics) -> dict`` (entries added to ``metrics``; a callback
may also add files to the bundle), then ``on_finish(state, metrics)``.

Each callback declares what it ``needs`` and what it ``provides`` (names such as ``bundle`` or
``calibration``); an order in which a callback comes before what it needs is refused when the run starts.
Callbacks run on rank 0 alone, except those that change batches (``every_rank``), which run on every rank.

A new callback is one class registered in :data:`CALLBACKS`; ``DEFAULT_CALLBACKS`` names the ones every run
has, in order (a user's callbacks come after them, so a user's function sees the epoch after its checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ..errors import ConfigError, DataError
from ..files import atomic_write, atomic_write_json
from ..registry import Registry
from .state import Batch, BundleInfo, LoopState

if TYPE_CHECKING:
    from .stages import Stage

__all__ = ["Callback", "CALLBACKS", "DEFAULT_CALLBACKS", "EpochState", "EpochFunction", "Mixup", "register_callback",
           "check_order", "plot_training_curves"]


class Callback:
    """Hooks the training loop calls; each does nothing unless overridden."""

    name = "callback"
    #: what must be done by a callback before this one (e.g. ``("bundle",)``)
    needs: tuple[str, ...] = ()
    #: what this callback does, for those after it
    provides: tuple[str, ...] = ()
    #: True: also called on the other ranks of a distributed run (callbacks that change batches)
    every_rank = False

    def on_start(self, state: LoopState) -> None:
        pass

    def on_stage_start(self, state: LoopState, stage: Stage) -> None:
        pass

    def on_batch(self, state: LoopState, batch: Batch) -> Batch:
        return batch

    def on_batch_end(self, state: LoopState, batch: Batch, loss: float) -> None:
        pass

    def on_epoch_end(self, state: LoopState, row: dict, epoch: int) -> None:
        pass

    def on_stage_end(self, state: LoopState, stage: Stage) -> None:
        pass

    def on_train_end(self, state: LoopState, metrics: dict) -> BundleInfo | None:
        return None

    def on_bundle(self, state: LoopState, bundle: BundleInfo, metrics: dict) -> dict | None:
        return None

    def on_finish(self, state: LoopState, metrics: dict) -> None:
        pass


def check_order(callbacks: Sequence[Callback]) -> None:
    """Refuse an order in which a callback comes before a callback that provides what it needs."""
    provided: set[str] = set()
    for position, callback in enumerate(callbacks):
        for need in callback.needs:
            if need in provided:
                continue
            later = next((c.name for c in callbacks[position + 1:] if need in c.provides), None)
            where = (f"'{later}' provides it after it: put '{callback.name}' after '{later}'" if later
                     else "no callback of this run provides it")
            raise ConfigError(f"training callback '{callback.name}' needs '{need}', but {where}")
        provided.update(callback.provides)


#: name -> callback class (made with no arguments)
CALLBACKS: Registry[type[Callback]] = Registry("training callback")


#: class decorator: make a :class:`Callback` subclass available by its ``name`` (``CALLBACKS.register(name, cls,
#: override=True)`` replaces one)
register_callback = CALLBACKS.decorator()


@register_callback
class HistoryFile(Callback):
    """``history.csv``: one row per epoch, rewritten atomically after each."""

    name = "history"
    provides = ("history",)

    def on_epoch_end(self, state, row, epoch):
        history = pd.DataFrame(state.history)
        atomic_write(state.run_dir / "history.csv", lambda tmp: history.to_csv(tmp, index=False))


@register_callback
class Tracking(Callback):
    """TensorBoard / MLflow (``--tracking``; see :mod:`.tracking`): parameters, per-epoch metrics, final
    metrics and the run's files."""

    name = "tracking"
    needs = ("history", "metrics", "curves")  # the files it logs when the run finishes

    def on_start(self, state):
        from .tracking import open_trackers

        cfg = state.config
        self.trackers = open_trackers(cfg.tracking, state.run_dir, Path(cfg.runs_dir), state.run_dir.name)
        for tracker in self.trackers:
            tracker.params(cfg.to_dict())

    def on_epoch_end(self, state, row, epoch):
        for tracker in getattr(self, "trackers", []):
            tracker.epoch(int(row["epoch"]), {k: v for k, v in row.items() if k not in ("epoch", "stage")})

    def on_finish(self, state, metrics):
        for tracker in getattr(self, "trackers", []):
            tracker.finish({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))},
                           [state.run_dir / n for n in ("config.yaml", "history.csv", "metrics.json", "curves.png")])


@register_callback
class Checkpoint(Callback):
    """``checkpoint.pt`` after every epoch (the stage, its epoch and its state: see the trainer)."""

    name = "checkpoint"
    needs = ("history",)  # the history is on disk before the checkpoint that counts its rows
    provides = ("checkpoint",)

    def on_epoch_end(self, state, row, epoch):
        from .checkpoint import save_checkpoint

        save_checkpoint(state, epoch)


@register_callback
class BundleWriter(Callback):
    """``bundle/``: the best weights, classes, preprocessing and the run's summary (:func:`~oncolens.models.save_bundle`)."""

    name = "bundle"
    provides = ("bundle",)

    def on_train_end(self, state, metrics):
        cfg = state.config
        meta = {"label_col": cfg.label_col, "run": str(state.run_dir), "best_epoch": metrics["best_epoch"],
                "best_stage": metrics["best_stage"], "tta": cfg.tta, "val_accuracy": metrics["val_accuracy"],
                "val_loss": metrics["val_loss"], "trained_on": cfg.data}
        return BundleInfo(state.run.task.save_bundle(state.run, state.run_dir / "bundle", meta), meta)


@register_callback
class MetricsFile(Callback):
    """``metrics.json``: the run's final numbers, with what other callbacks added."""

    name = "metrics"
    needs = ("calibration",)  # its report is part of the metrics
    provides = ("metrics",)

    def on_finish(self, state, metrics):
        atomic_write_json(state.run_dir / "metrics.json", metrics)


@register_callback
class Calibration(Callback):
    """Temperature, conformal calibration and OOD detectors stored in the bundle (:mod:`.calibrate`), from the
    frozen backbone's cached features when they are at hand; a dataset too small to calibrate is reported in
    ``metrics["calibration"]``, never a failed run."""

    name = "calibration"
    needs = ("bundle",)
    provides = ("calibration",)

    def on_bundle(self, state, bundle, metrics):
        return {"calibration": self._calibrate(state, bundle) if state.config.calibrate
                else {"skipped": "calibrate: false"}}

    @staticmethod
    def _calibrate(state: LoopState, bundle: BundleInfo) -> dict:
        import torch

        from ..models.trust import save_trust
        from .calibrate import CalibrationConfig, calibrate

        cfg, run = state.config, state.run
        fit_features = calibration_features = None
        best = next(s for s in state.stages if s.name == bundle.meta["best_stage"])
        views = (run.features.train_views[0], run.features.val) if best.inputs.cached and run.features else None
        if views is not None:  # the frozen backbone's features are at hand: no image is decoded again
            with torch.no_grad():
                fit_features, calibration_features = (
                    (x.numpy(), run.model.head(x.to(run.device)).float().cpu().numpy(), y.numpy()) for x, y in views)
            if cfg.tta not in (None, "none"):  # calibrated as predictions are made: with test-time augmentation
                calibration_features = None
        frame = run.frame
        options = {"batch_size": max(cfg.batch_size, 32), "num_workers": cfg.num_workers}
        try:
            loaded = run.task.trained_bundle(run, bundle.path, bundle.meta)  # as a loaded bundle runs
            trust = calibrate(loaded, frame[frame["split"] == "train"], frame[frame["split"] == "val"],
                              config=CalibrationConfig(alpha=cfg.alpha, options=options), fit_features=fit_features,
                              calibration_features=calibration_features, strict=False,
                              refuse_at_bound=False)  # its OOD detectors still hold; the report warns
        except DataError as exc:
            state.console.print(f"not calibrated: {exc}", markup=False, highlight=False)
            return {"skipped": str(exc)}
        save_trust(trust, bundle.path)
        report = trust.report
        ece = (f"ECE {report['ece_before']:.3f} -> {report['ece_after']:.3f} (T={report['temperature']:.2f}); "
               if "ece_after" in report else "")
        sets = report.get("conformal") or f"prediction sets at alpha {trust.default_alpha:g}"
        if report.get("warning"):
            state.console.print(f"warning: {report['warning']}", style="bold yellow", markup=False, highlight=False)
        state.console.print(f"calibrated on {report['calibration_images']} validation images: {ece}{sets}; OOD "
                          f"detectors {', '.join(trust.detectors)} (thresholds at {trust.id_recall:.0%} "
                            f"in-distribution recall), {report['seconds']:.1f}s", markup=False, highlight=False)
        return report


@register_callback
class ModelCard(Callback):
    """``MODEL_CARD.md`` and ``model_card.json`` in the bundle (:mod:`oncolens.models.card`): intended use, the
    training data's fingerprint and recipe, validation accuracy with its interval, calibration, provenance."""

    name = "card"
    needs = ("bundle", "calibration")  # the card states the calibration stored in the bundle
    provides = ("card",)

    def on_bundle(self, state, bundle, metrics):
        import json

        from ..models.card import training_facts, update_model_card

        cfg = state.config
        recipe_file = state.run_dir / "recipe.json"
        recipe = json.loads(recipe_file.read_text()) if recipe_file.exists() else None
        grouping = state.run_dir / "grouping.txt"
        facts = training_facts(state.run.frame, cfg.label_col, manifest=cfg.data, recipe=recipe,
                               grouping=grouping.read_text().strip() if grouping.exists() else None)
        update_model_card(bundle.path, name=state.run_dir.name, intended_use=cfg.intended_use, training_data=facts)
        return None


@register_callback
class Curves(Callback):
    """``curves.png``: loss and accuracy per epoch."""

    name = "curves"
    provides = ("curves",)

    def on_finish(self, state, metrics):
        plot_training_curves(pd.DataFrame(state.history), state.run_dir / "curves.png")


def plot_training_curves(history: pd.DataFrame, out: Path) -> Path | None:
    """Loss and accuracy per epoch, train against validation."""
    if history.empty:
        return None
    from ..figures import save_figure, subplots

    fig, axes = subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(history["epoch"], history[f"train_{metric}"], marker="o", label="train")
        ax.plot(history["epoch"], history[f"val_{metric}"], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, out)
    return out


@register_callback
class Mixup(Callback):
    """Mixup (Zhang et al. 2018): each training batch becomes convex mixtures of pairs of its inputs, with the
    same mixture of their one-hot targets; the mixing weight is drawn from Beta(``alpha``, ``alpha``) per batch.
    It changes batches only, so every stage with gradient steps gets it with the loop's AMP and DDP."""

    name = "mixup"
    every_rank = True

    def __init__(self, alpha: float = 0.2):
        if not alpha > 0:
            raise ConfigError(f"mixup alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def on_batch(self, state, batch):
        import torch

        if len(batch) < 2 or not batch.x.is_floating_point():
            return batch
        share = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
        mate = torch.randperm(len(batch))
        target = batch.target if batch.target.is_floating_point() else \
            torch.nn.functional.one_hot(batch.y, len(state.classes)).float()
        return Batch(share * batch.x + (1 - share) * batch.x[mate], batch.y,
                     share * target + (1 - share) * target[mate.to(target.device)])


#: every run's callbacks, in the order they are called
DEFAULT_CALLBACKS = ("history", "checkpoint", "bundle", "calibration", "card", "metrics", "curves", "tracking")


@dataclass
class EpochState:
    """What a per-epoch function sees after each training epoch (its checkpoint is already on disk)."""

    epoch: int
    history: list[dict]
    run_dir: Path


class EpochFunction(Callback):
    """A plain ``fn(EpochState)`` called after every gradient epoch (not after the probe's fit)."""

    name = "epoch-function"
    needs = ("checkpoint",)

    def __init__(self, fn: Callable[[EpochState], None]):
        self.fn = fn

    def on_epoch_end(self, state, row, epoch):
        if row.get("stage") != "probe":
            self.fn(EpochState(epoch=epoch, history=list(state.history), run_dir=state.run_dir))
