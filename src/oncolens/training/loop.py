"""The one training loop: runs a run's stages (:mod:`.stages`) in order and calls the callbacks
(:mod:`.callbacks`) around them, with one typed state (:class:`~.state.LoopState`) for both.

The loop owns what every stage shares: the device and mixed precision, DDP (stages on images train on
every rank; stages on cached features on rank 0), the batch events, validation, the LR schedule (reduce on
plateau), early stopping, the best weights (``best.safetensors``) and the checkpoint: the stage's index, its
last finished epoch and its state, so a resumed run continues inside the stage it was in. Each epoch starts
from a seed derived from (seed, epoch), so a resumed run continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.distributed.algorithms.join import Join

from ..distributed import Distributed
from ..errors import DataError
from .callbacks import Callback, check_order
from .checkpoint import load_best, save_best
from .run import TrainingRun
from .seeding import seed_everything
from .stages import EpochResult, Stage
from .state import Batch, LoopState

__all__ = ["Loop"]

_COLUMNS = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())


def paired_gain(before: torch.Tensor, after: torch.Tensor, dist: Distributed | None = None) -> tuple[float, float, int]:
    """The mean per-input decrease of the loss from ``before`` to ``after`` (the same inputs, in order), its
    standard error and the number of inputs (summed over the ranks of ``dist``)."""
    d = (before - after).double()
    sums = [float(d.sum()), float((d * d).sum()), len(d)]
    total, squares, n = dist.all_sum(sums) if dist is not None else sums
    gain = total / max(n, 1)
    variance = max(squares / max(n, 1) - gain * gain, 0.0) * n / max(n - 1, 1)
    return gain, (variance / max(n, 1)) ** 0.5, int(n)


def resolved(state: LoopState, stage: Stage, val_loss: float, losses: torch.Tensor) -> bool:
    """Whether ``stage``'s lower validation loss is a gain the validation images can resolve: always, unless
    the stage must beat an earlier stage's best by more than one standard error of the paired per-image
    difference (e.g. fine-tuning over the probe, on a small grouped validation carve)."""
    best = state.best_losses
    if not stage.must_resolve or state.best_stage in (None, stage.name) or best is None or len(best) != len(losses):
        return True
    gain, se, n = paired_gain(best, losses, state.dist if state.ddp is not None else None)
    if gain > se:
        return True
    state.console.print(f"{stage.name}: val_loss {val_loss:.4f} is {gain:.4f} below {state.best_stage}'s, within one "
                        f"standard error ({se:.4f}) of the {n} validation images: {state.best_stage} is kept",
                        highlight=False)
    return False


class Loop:
    """Runs ``stages`` on ``run``; ``callbacks`` see its :attr:`state`. Their order is checked when the loop is
    made (each callback's ``needs`` must be provided by one before it)."""

    def __init__(self, run: TrainingRun, stages: list[Stage], callbacks: list[Callback], console: Any,
                 dist: Distributed):
        check_order(callbacks)
        # rank 0 alone writes; callbacks that change batches (``every_rank``) run on every rank
        self.callbacks = [c for c in callbacks if dist.is_main or c.every_rank]
        use_amp = run.device.type == "cuda"
        self.state = LoopState(run=run, stages=stages, console=console, dist=dist, use_amp=use_amp,
                               scaler=torch.amp.GradScaler("cuda") if use_amp else None)
        self._bar: Progress | None = None

    def event(self, hook: str, *args: Any) -> list[Any]:
        """Call ``hook`` on every callback, in order; what each returned."""
        return [getattr(callback, hook)(self.state, *args) for callback in self.callbacks]

    # --- stages and epochs --------------------------------------------------------------------
    def fit(self) -> bool | None:
        """Run every pending stage; on rank 0 whether any stopped early, on the other ranks None."""
        state, dist = self.state, self.state.dist
        self.event("on_start")
        first, next_epoch, saved = state.resume_at or (0, None, None)
        for index in range(first, len(state.stages)):
            stage = state.stages[index]
            if dist.enabled and stage.distributed:  # rank 0's counters after its rank-0-only stages
                state.best_val, state.best_epoch, state.best_stage, state.bad_epochs, state.history = \
                    dist.broadcast((state.best_val, state.best_epoch, state.best_stage, state.bad_epochs,
                                    state.history))
            elif dist.enabled and not dist.is_main:
                continue
            self._start(index, saved if index == first else None)
            self.event("on_stage_start", stage)
            self._run_epochs(stage, next_epoch if index == first else None)
            self.event("on_stage_end", stage)
        state.ddp = None  # rank 0 alone saves, evaluates and calibrates the bundle
        return state.stopped if dist.is_main else None

    def _start(self, index: int, saved: dict | None) -> None:
        state = self.state
        state.stage_index = index
        state.optimizer = state.stage.start(state)
        state.scheduler = None if state.optimizer is None else torch.optim.lr_scheduler.ReduceLROnPlateau(
            state.optimizer, mode="min", factor=state.config.lr_factor, patience=state.config.lr_patience)
        if saved is None:
            state.bad_epochs = 0
        elif state.optimizer is not None:
            state.optimizer.load_state_dict(saved["optimizer"])
            state.scheduler.load_state_dict(saved["scheduler"])
        if state.dist.enabled and state.stage.distributed and state.ddp is None:
            on_cuda = state.device.type == "cuda"
            if on_cuda:  # batch statistics over every rank's images (SyncBatchNorm runs on GPUs only)
                state.run.model = nn.SyncBatchNorm.convert_sync_batchnorm(state.model)  # same parameter objects
            # on CPU each rank normalises by its own images' statistics: like a single process at batch B / N;
            # DDP broadcasts rank 0's weights (e.g. the probe's head) to every rank
            state.ddp = nn.parallel.DistributedDataParallel(state.model, device_ids=[state.device.index or 0]
                                                            if on_cuda else None)

    def _run_epochs(self, stage: Stage, next_epoch: int | None) -> None:
        state = self.state
        epochs = stage.epochs(state)
        with Progress(*_COLUMNS, console=state.console, transient=True,
                      disable=not state.console.is_terminal) as self._bar:
            for epoch in range(epochs.start if next_epoch is None else next_epoch, epochs.stop):
                if state.bad_epochs >= state.config.patience:
                    state.stopped = True
                    state.console.print(f"early stopping: no val_loss improvement for {state.config.patience} epochs")
                    return
                self._epoch(stage, epoch)

    def _epoch(self, stage: Stage, epoch: int) -> None:
        """One epoch: train, validate, schedule, keep the best, call the callbacks."""
        state = self.state
        seed_everything(state.config.seed * 1000 + epoch)
        started = time.perf_counter()
        lr = state.optimizer.param_groups[0]["lr"] if state.optimizer is not None else 0.0
        train_loss, train_acc, seen = stage.train_epoch(state, epoch, self.gradient_epoch)
        val_loss, val_acc, losses = self.validate(stage)
        elapsed = time.perf_counter() - started
        if state.scheduler is not None:
            state.scheduler.step(val_loss)
        improved = val_loss < state.best_val - 1e-7 and resolved(state, stage, val_loss, losses)
        if improved:
            state.best_val, state.best_epoch, state.best_stage, state.bad_epochs = val_loss, epoch, stage.name, 0
            state.best_losses = losses
            save_best(state)
        else:
            state.bad_epochs += 1
        where = f"epoch {epoch + 1}/{stage.epochs(state).stop}" if state.optimizer is not None else "fit"
        state.console.print(f"{'' if stage.name == 'train' else stage.name + ' '}{where}  loss {train_loss:.4f}  "
                            f"acc {train_acc:.3f}  val_loss {val_loss:.4f}  val_acc {val_acc:.3f}  lr {lr:.2e}  "
                            f"{elapsed:.1f}s" + ("  *" if improved else ""), highlight=False)
        row = {"epoch": epoch + 1, "stage": stage.name, "train_loss": train_loss, "train_accuracy": train_acc,
               "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr, "seconds": elapsed,
               "images_per_s": seen / max(elapsed, 1e-9)}
        state.history.append(row)
        self.event("on_epoch_end", row, epoch)

    def gradient_epoch(self, stage: Stage, epoch: int) -> EpochResult:
        """One epoch of gradient steps on ``stage``'s batches, each passed through the callbacks' ``on_batch``
        first: (mean loss, accuracy, images seen)."""
        state = self.state
        stage.train_mode(state)
        loader = stage.inputs.train_batches(state, epoch)
        task = self._bar.add_task(f"epoch {epoch + 1}", total=len(loader)) if self._bar is not None else None
        total, correct, seen = 0.0, 0, 0
        # ranks whose batches lost unreadable images take fewer steps: Join stands in for the missing ones
        with Join([state.ddp]) if state.ddp is not None else nullcontext():
            for x, y in loader:
                if task is not None:
                    self._bar.advance(task)
                if len(y) == 0:
                    continue
                batch = Batch(x, y.to(state.device))
                for callback in self.callbacks:
                    batch = callback.on_batch(state, batch)
                state.optimizer.zero_grad(set_to_none=True)
                with torch.autocast(state.device.type, enabled=state.use_amp):
                    logits = stage.forward(state, batch.x)
                    loss = stage.loss(state, logits, batch)
                scaler = state.scaler
                (scaler.scale(loss) if scaler else loss).backward()
                scaler.step(state.optimizer) if scaler else state.optimizer.step()
                scaler.update() if scaler else None
                if not torch.isfinite(loss.detach()):
                    last = state.history[-1]["epoch"] if state.history else 0
                    raise DataError(f"the training loss became {float(loss.detach()):g} in epoch {epoch + 1}: training "
                                    f"diverged. Lower the learning rate (now {state.optimizer.param_groups[0]['lr']:g}) "
                                    f"or check the inputs; the run folder keeps the checkpoint of the last finished "
                                    f"epoch ({last}).")
                self.event("on_batch_end", batch, float(loss.detach()))
                total, correct, seen = (total + float(loss.detach()) * len(batch),
                                        correct + int((logits.argmax(1) == batch.y).sum()), seen + len(batch))
        if task is not None:
            self._bar.remove_task(task)
        if state.ddp is not None:
            total, correct, seen = state.dist.all_sum([total, correct, seen])
        return total / max(seen, 1), correct / max(seen, 1), int(seen)

    @torch.inference_mode()
    def validate(self, stage: Stage | None = None) -> tuple[float, float, torch.Tensor]:
        """Validation loss, accuracy and each (of this rank's) validation input's loss."""
        state = self.state
        stage = stage or state.stage
        state.model.eval()
        weight = getattr(state.run.val_criterion, "weight", None)
        losses, correct = [], 0
        for x, y in stage.inputs.val_batches(state):
            if len(y):
                y = y.to(state.device)
                logits = stage.forward(state, x).float()
                losses.append(nn.functional.cross_entropy(logits, y, weight=weight, reduction="none").cpu())
                correct += int((logits.argmax(1) == y).sum())
        per_input = torch.cat(losses) if losses else torch.zeros(0)
        total, seen = float(per_input.sum()), len(per_input)
        if state.ddp is not None:  # each rank scored its shard of the validation images
            total, correct, seen = state.dist.all_sum([total, correct, seen])
        if seen == 0:
            raise DataError("no readable validation images")
        return total / seen, correct / seen, per_input
