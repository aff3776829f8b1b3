"""Training is a sequence of stages run by the trainer's loop: a closed-form :class:`ProbeStage` (the linear
probe on cached features) and a :class:`GradientStage` (epochs of gradient steps: from scratch, a frozen
backbone's head on cached features, or fine-tuning after the probe).

The trainer picks the stages from the configuration (``--head logreg`` -> probe; ``--finetune last-N`` ->
probe, then gradient; anything else -> gradient) and runs each one still pending; a checkpoint records the
stage (``probe``, ``train`` or ``finetune``) and its epoch, so a resumed run continues in the stage it was
in. A new stage is one class registered in :data:`STAGES`.
"""

from __future__ import annotations

import time
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..registry import Registry

__all__ = ["Stage", "ProbeStage", "GradientStage", "STAGES", "register_stage"]


class Stage:
    """One stage of a run; ``run(trainer)`` returns whether it stopped early."""

    name = "stage"

    def pending(self, run: Any) -> bool:
        """Whether this stage still has to run (a resumed run skips the finished ones)."""
        return True

    def run(self, run: Any) -> bool:
        raise NotImplementedError


#: name -> stage class
STAGES: Registry[type[Stage]] = Registry("training stage")


#: class decorator: make a :class:`Stage` subclass available by its ``name`` (``STAGES.register(name, cls,
#: override=True)`` replaces one)
register_stage = STAGES.decorator()


@register_stage
class ProbeStage(Stage):
    """The linear probe: one closed-form fit on rank 0 (cheap and deterministic: a resumed probe-only run fits
    it again); in a two-stage run the other ranks wait for it and take its results."""

    name = "probe"

    def pending(self, run):
        return not (run.probe_done and run.finetune)

    def run(self, run):
        if run.dist.is_main:
            run._fit_probe()
        if run.finetune:  # the probe's head weights reach the other ranks when they join for fine-tuning
            run.best_val, run.best_epoch, run.bad_epochs, run.history = run.dist.broadcast(
                (run.best_val, run.best_epoch, run.bad_epochs, run.history))
            run.probe_done = True
        return False


@register_stage
class GradientStage(Stage):
    """Epochs of gradient steps with the LR schedule and early stopping; after a probe, the fine-tuning of
    the last blocks (an epoch counts only if it beats the probe's validation loss)."""

    name = "gradient"

    def run(self, run):
        cfg = run.config
        if run.finetune and run.stage != "finetune":
            run._start_finetune()
            trainable = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
            run.console.print(f"fine-tuning {cfg.finetune} ({trainable:,} parameters) at lr {cfg.lr:g}; an epoch "
                              f"is kept only if its validation loss beats the probe's ({run.best_val:.4f})")
        run._join_ranks()
        stopped = run.bad_epochs >= cfg.patience
        columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
        with Progress(*columns, console=run.console, transient=True, disable=not run.console.is_terminal) as progress:
            for epoch in range(run.start_epoch, cfg.epochs):
                if stopped:
                    break
                stopped = self._epoch(run, epoch, progress)
        return stopped

    @staticmethod
    def _epoch(run, epoch: int, progress: Progress) -> bool:
        """One epoch: train, validate, schedule, keep the best; whether early stopping ends the stage."""
        from .trainer import seed_everything

        cfg = run.config
        seed_everything(cfg.seed * 1000 + epoch)
        started = time.perf_counter()
        train_loss, train_acc, seen = run._train_epoch(epoch, progress)
        val_loss, val_acc = run.evaluate_val()
        elapsed = time.perf_counter() - started
        lr = run.optimizer.param_groups[0]["lr"]
        run.scheduler.step(val_loss)
        improved = val_loss < run.best_val - 1e-7
        if improved:
            run.best_val, run.best_epoch, run.bad_epochs = val_loss, epoch, 0
            run._save_best()
        else:
            run.bad_epochs += 1
        run.console.print(f"epoch {epoch + 1}/{cfg.epochs}  loss {train_loss:.4f}  acc {train_acc:.3f}  "
                          f"val_loss {val_loss:.4f}  val_acc {val_acc:.3f}  lr {lr:.2e}  {elapsed:.1f}s"
                          + ("  *" if improved else ""))
        run._epoch_end({"epoch": epoch + 1, "stage": run.stage, "train_loss": train_loss, "train_accuracy": train_acc,
                        "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr, "seconds": elapsed,
                        "images_per_s": seen / max(elapsed, 1e-9)}, epoch)
        if run.bad_epochs >= cfg.patience:
            run.console.print(f"early stopping: no val_loss improvement for {cfg.patience} epochs")
            return True
        return False
