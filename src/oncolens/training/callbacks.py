"""What happens around the training loop, as callbacks: the history file, TensorBoard/MLflow, the checkpoint,
the bundle, its calibration, metrics.json, the curves figure, and a user's per-epoch function.

The loop (:mod:`.loop`) calls, on rank 0 and in list order: ``on_start(run)`` once; ``on_epoch_end(run,
row, epoch)`` after every epoch of every stage (``row`` is the history row, already appended to
``run.history``); once the stages are done and the best weights are back in ``run.model``:
``on_train_end(run, metrics)`` (the bundle callback writes ``run.bundle_path`` and ``run.meta``), then
``on_bundle(run, bundle, meta, metrics)`` (a callback may add files to the bundle and entries to
``metrics``), then ``on_finish(run, metrics)`` (``metrics.json`` is written first). ``run`` is the loop: its
``config``, ``model``, ``history``, ``run_dir``, ``console``, ``features`` ...

A new callback is one class registered in :data:`CALLBACKS`; ``DEFAULT_CALLBACKS`` names the ones every run
has, in order (the history is on disk before the checkpoint that counts it; a user's callbacks come after
them, so a user's function sees the epoch after its checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DataError
from ..files import atomic_write, atomic_write_json
from ..registry import Registry

__all__ = ["Callback", "CALLBACKS", "DEFAULT_CALLBACKS", "EpochState", "EpochFunction", "register_callback"]


class Callback:
    """Hooks the training loop calls (rank 0 only); each does nothing unless overridden."""

    name = "callback"

    def on_start(self, run: Any) -> None:
        pass

    def on_epoch_end(self, run: Any, row: dict, epoch: int) -> None:
        pass

    def on_train_end(self, run: Any, metrics: dict) -> None:
        pass

    def on_bundle(self, run: Any, bundle: Path, meta: dict, metrics: dict) -> None:
        pass

    def on_finish(self, run: Any, metrics: dict) -> None:
        pass


#: name -> callback class (made with no arguments)
CALLBACKS: Registry[type[Callback]] = Registry("training callback")


#: class decorator: make a :class:`Callback` subclass available by its ``name`` (``CALLBACKS.register(name, cls,
#: override=True)`` replaces one)
register_callback = CALLBACKS.decorator()


@register_callback
class HistoryFile(Callback):
    """``history.csv``: one row per epoch, rewritten atomically after each."""

    name = "history"

    def on_epoch_end(self, run, row, epoch):
        history = pd.DataFrame(run.history)
        atomic_write(run.run_dir / "history.csv", lambda tmp: history.to_csv(tmp, index=False))


@register_callback
class Tracking(Callback):
    """TensorBoard / MLflow (``--tracking``; see :mod:`.tracking`): parameters, per-epoch metrics, final
    metrics and the run's files."""

    name = "tracking"

    def on_start(self, run):
        from .tracking import open_trackers

        cfg = run.config
        self.trackers = open_trackers(cfg.tracking, run.run_dir, Path(cfg.runs_dir), run.run_dir.name)
        for tracker in self.trackers:
            tracker.params(cfg.to_dict())

    def on_epoch_end(self, run, row, epoch):
        for tracker in getattr(self, "trackers", []):
            tracker.epoch(int(row["epoch"]), {k: v for k, v in row.items() if k not in ("epoch", "stage")})

    def on_finish(self, run, metrics):
        for tracker in getattr(self, "trackers", []):
            tracker.finish({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))},
                           [run.run_dir / n for n in ("config.yaml", "history.csv", "metrics.json", "curves.png")])


@register_callback
class Checkpoint(Callback):
    """``checkpoint.pt`` after every epoch (the stage, its epoch and its state: see the trainer)."""

    name = "checkpoint"

    def on_epoch_end(self, run, row, epoch):
        from .checkpoint import save_checkpoint

        save_checkpoint(run, epoch)


@register_callback
class BundleWriter(Callback):
    """``bundle/``: the best weights, classes, preprocessing and the run's summary (:func:`~oncolens.models.save_bundle`)."""

    name = "bundle"

    def on_train_end(self, run, metrics):
        import torch

        from ..models import save_bundle

        cfg = run.config
        run.meta = {"label_col": cfg.label_col, "run": str(run.run_dir), "best_epoch": metrics["best_epoch"],
                    "best_stage": metrics["best_stage"], "tta": cfg.tta, "val_accuracy": metrics["val_accuracy"],
                    "val_loss": metrics["val_loss"], "trained_on": cfg.data}
        if hasattr(run.model, "explain"):  # a bag classifier: the bundle also says how its bags are made
            from ..models.mil import save_mil_bundle

            bags = run.extra_metrics.get("bags", {})
            run.bundle_path = save_mil_bundle(run.model.cpu(), run.classes, bags.get("extractor") or {},
                                              bags.get("bag") or {}, run.run_dir / "bundle", meta=run.meta)
            return
        model = run.model.to(memory_format=torch.contiguous_format).cpu()
        run.bundle_path = save_bundle(model, run.classes, run.run_dir / "bundle", meta=run.meta)


@register_callback
class MetricsFile(Callback):
    """``metrics.json``: the run's final numbers, with what other callbacks added."""

    name = "metrics"

    def on_finish(self, run, metrics):
        atomic_write_json(run.run_dir / "metrics.json", metrics)


@register_callback
class Calibration(Callback):
    """Temperature, conformal calibration and OOD detectors stored in the bundle (:mod:`.calibrate`), from the
    frozen backbone's cached features when they are at hand; a dataset too small to calibrate is reported in
    ``metrics["calibration"]``, never a failed run."""

    name = "calibration"

    def on_bundle(self, run, bundle, meta, metrics):
        metrics["calibration"] = (self._calibrate(run, bundle, meta) if run.config.calibrate
                                  else {"skipped": "calibrate: false"})

    @staticmethod
    def _calibrate(run, bundle: Path, meta: dict) -> dict:
        import torch

        from ..models.bundle import Bundle
        from ..models.trust import save_trust
        from .calibrate import CalibrationConfig, calibrate

        cfg = run.config
        fit_features = calibration_features = None
        best = next(s for s in run.stages if s.name == meta["best_stage"])
        views = (run.features.train_views[0], run.features.val) if best.inputs == "features" and run.features \
            else None
        if views is not None:  # the frozen backbone's features are at hand: no image is decoded again
            with torch.no_grad():
                fit_features, calibration_features = (
                    (x.numpy(), run.model.head(x.to(run.device)).float().cpu().numpy(), y.numpy()) for x, y in views)
            if cfg.tta not in (None, "none"):  # calibrated as predictions are made: with test-time augmentation
                calibration_features = None
        frame = run.frame
        options = {"batch_size": max(cfg.batch_size, 32), "num_workers": cfg.num_workers}
        try:
            if hasattr(run.model, "explain"):  # a bag classifier: calibrated on bags, as it predicts
                from ..models.mil import load_mil_bundle

                loaded = load_mil_bundle(bundle)
            else:
                model = run.model.eval().to(memory_format=torch.channels_last if run.channels_last
                                            else torch.contiguous_format)  # as a loaded bundle runs
                loaded = Bundle(model=model, classes=run.classes, preprocessing=run.model.preprocessing,
                                meta=meta, path=bundle)
            trust = calibrate(loaded, frame[frame["split"] == "train"], frame[frame["split"] == "val"],
                              config=CalibrationConfig(alpha=cfg.alpha, options=options), fit_features=fit_features,
                              calibration_features=calibration_features, strict=False)
        except DataError as exc:
            run.console.print(f"not calibrated: {exc}", markup=False, highlight=False)
            return {"skipped": str(exc)}
        save_trust(trust, bundle)
        report = trust.report
        ece = (f"ECE {report['ece_before']:.3f} -> {report['ece_after']:.3f} (T={report['temperature']:.2f}); "
               if "ece_after" in report else "")
        sets = report.get("conformal") or f"prediction sets at alpha {trust.default_alpha:g}"
        run.console.print(f"calibrated on {report['calibration_images']} validation images: {ece}{sets}; OOD "
                          f"detectors {', '.join(trust.detectors)} (thresholds at {trust.id_recall:.0%} "
                          f"in-distribution recall), {report['seconds']:.1f}s", markup=False, highlight=False)
        return report


@register_callback
class ModelCard(Callback):
    """``MODEL_CARD.md`` and ``model_card.json`` in the bundle (:mod:`oncolens.models.card`): intended use, the
    training data's fingerprint and recipe, validation accuracy with its interval, calibration, provenance."""

    name = "card"

    def on_bundle(self, run, bundle, meta, metrics):
        import json

        from ..models.card import training_facts, update_model_card

        cfg = run.config
        recipe_file = run.run_dir / "recipe.json"
        recipe = json.loads(recipe_file.read_text()) if recipe_file.exists() else None
        grouping = run.run_dir / "grouping.txt"
        facts = training_facts(run.frame, cfg.label_col, manifest=cfg.data, recipe=recipe,
                               grouping=grouping.read_text().strip() if grouping.exists() else None)
        update_model_card(bundle, name=run.run_dir.name, intended_use=cfg.intended_use, training_data=facts)


@register_callback
class Curves(Callback):
    """``curves.png``: loss and accuracy per epoch."""

    name = "curves"

    def on_finish(self, run, metrics):
        from .trainer import plot_training_curves

        plot_training_curves(pd.DataFrame(run.history), run.run_dir / "curves.png")


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

    def __init__(self, fn: Callable[[EpochState], None]):
        self.fn = fn

    def on_epoch_end(self, run, row, epoch):
        if row.get("stage") != "probe":
            self.fn(EpochState(epoch=epoch, history=list(run.history), run_dir=run.run_dir))
