"""The one training loop: runs a run's stages (:mod:`.stages`) in order and calls the callbacks
(:mod:`.callbacks`) around them.

The loop owns what every stage shares: the device and mixed precision, DDP (stages on images train on
every rank; stages on cached features on rank 0), validation, the LR schedule (reduce on plateau),
early stopping, the best weights (``best.safetensors``) and the checkpoint: the stage's index, its last
finished epoch and its state, so a resumed run continues inside the stage it was in. Each epoch starts
from a seed derived from (seed, epoch), so a resumed run continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn
from torch.distributed.algorithms.join import Join

from ..errors import DataError
from .batches import train_batches, val_batches
from .checkpoint import save_best
from .stages import Stage

__all__ = ["Loop"]

_COLUMNS = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())


class Loop:
    """Runs ``stages`` on ``run`` (a :class:`~.trainer.TrainingRun`, whose fields it also shows: ``config``,
    ``model``, ``classes``, ``run_dir`` ...); callbacks see the loop as ``run``."""

    def __init__(self, run: Any, stages: list[Stage], callbacks: list, console: Any, dist: Any):
        self.run, self.stages, self.console, self.dist = run, stages, console, dist
        self.callbacks = callbacks if dist.is_main else []  # rank 0 alone writes
        self.use_amp = run.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self.history: list[dict] = []
        self.best_val, self.best_epoch, self.best_stage, self.bad_epochs = math.inf, -1, None, 0
        self.stage_index, self.stage, self.optimizer, self.scheduler = 0, stages[0], None, None
        self.stopped = False
        self.resume_at: tuple[int, int, dict] | None = None  # (stage index, next epoch, stage state)

    def __getattr__(self, name: str) -> Any:  # the run's fields, read through the loop
        return getattr(self.run, name) if name != "run" else object.__getattribute__(self, name)

    def event(self, hook: str, *args) -> None:
        """Call ``hook`` on every callback, in order."""
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    # --- stages and epochs --------------------------------------------------------------------
    def fit(self) -> bool:
        """Run every pending stage; on rank 0 whether any stopped early, on the other ranks None."""
        self.event("on_start")
        first, next_epoch, state = self.resume_at or (0, None, None)
        for index in range(first, len(self.stages)):
            stage = self.stages[index]
            if self.dist.enabled and stage.distributed:  # rank 0's counters after its rank-0-only stages
                self.best_val, self.best_epoch, self.best_stage, self.bad_epochs, self.history = \
                    self.dist.broadcast((self.best_val, self.best_epoch, self.best_stage, self.bad_epochs,
                                         self.history))
            elif self.dist.enabled and not self.dist.is_main:
                continue
            self._start(index, state if index == first else None)
            self._run_epochs(stage, next_epoch if index == first else None)
        self.ddp = None  # rank 0 alone saves, evaluates and calibrates the bundle
        return self.stopped if self.dist.is_main else None

    def _start(self, index: int, state: dict | None) -> None:
        self.stage_index, self.stage = index, self.stages[index]
        self.optimizer = self.stage.start(self)
        self.scheduler = None if self.optimizer is None else torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=self.config.lr_factor, patience=self.config.lr_patience)
        if state is None:
            self.bad_epochs = 0
        elif self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        if self.dist.enabled and self.stage.distributed and self.ddp is None:
            on_cuda = self.device.type == "cuda"
            if on_cuda:  # batch statistics over every rank's images (SyncBatchNorm runs on GPUs only)
                self.run.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # same parameter objects
            # on CPU each rank normalises by its own images' statistics: like a single process at batch B / N;
            # DDP broadcasts rank 0's weights (e.g. the probe's head) to every rank
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=[self.device.index or 0]
                                                           if on_cuda else None)

    def _run_epochs(self, stage: Stage, next_epoch: int | None) -> None:
        epochs = stage.epochs(self)
        with Progress(*_COLUMNS, console=self.console, transient=True, disable=not self.console.is_terminal) as bar:
            for epoch in range(epochs.start if next_epoch is None else next_epoch, epochs.stop):
                if self.bad_epochs >= self.config.patience:
                    self.stopped = True
                    self.console.print(f"early stopping: no val_loss improvement for {self.config.patience} epochs")
                    return
                self._epoch(stage, epoch, bar)

    def _epoch(self, stage: Stage, epoch: int, bar: Progress) -> None:
        """One epoch: train, validate, schedule, keep the best, call the callbacks."""
        from .trainer import seed_everything

        seed_everything(self.config.seed * 1000 + epoch)
        started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else 0.0
        train_loss, train_acc, seen = stage.train_epoch(self, epoch, bar)
        val_loss, val_acc = self.evaluate(stage)
        elapsed = time.perf_counter() - started
        if self.scheduler is not None:
            self.scheduler.step(val_loss)
        improved = val_loss < self.best_val - 1e-7
        if improved:
            self.best_val, self.best_epoch, self.best_stage, self.bad_epochs = val_loss, epoch, stage.name, 0
            save_best(self)
        else:
            self.bad_epochs += 1
        where = f"epoch {epoch + 1}/{stage.epochs(self).stop}" if self.optimizer is not None else "fit"
        self.console.print(f"{'' if stage.name == 'train' else stage.name + ' '}{where}  loss {train_loss:.4f}  "
                           f"acc {train_acc:.3f}  val_loss {val_loss:.4f}  val_acc {val_acc:.3f}  lr {lr:.2e}  "
                           f"{elapsed:.1f}s" + ("  *" if improved else ""), highlight=False)
        row = {"epoch": epoch + 1, "stage": stage.name, "train_loss": train_loss, "train_accuracy": train_acc,
               "val_loss": val_loss, "val_accuracy": val_acc, "lr": lr, "seconds": elapsed,
               "images_per_s": seen / max(elapsed, 1e-9)}
        self.history.append(row)
        self.event("on_epoch_end", row, epoch)

    def gradient_epoch(self, stage: Stage, epoch: int, bar: Progress) -> tuple[float, float, int]:
        """One epoch of gradient steps on ``stage``'s batches: (mean loss, accuracy, images seen)."""
        stage.train_mode(self)
        loader = train_batches(self, stage.inputs, epoch)
        task = bar.add_task(f"epoch {epoch + 1}", total=len(loader))
        total, correct, seen = 0.0, 0, 0
        # ranks whose batches lost unreadable images take fewer steps: Join stands in for the missing ones
        with Join([self.ddp]) if self.ddp is not None else nullcontext():
            for x, y in loader:
                bar.advance(task)
                if len(y) == 0:
                    continue
                y = y.to(self.device)
                self.optimizer.zero_grad(set_to_none=True)
                with torch.autocast(self.device.type, enabled=self.use_amp):
                    logits = self.forward(stage.inputs, x)
                    loss = self.criterion(logits.float(), y)
                    extra = getattr(self.model.head, "extra_loss", lambda target: None)(y[0])  # e.g. CLAM's
                    loss = loss if extra is None else loss + extra
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                self.scaler.step(self.optimizer) if self.scaler else self.optimizer.step()
                self.scaler.update() if self.scaler else None
                if not torch.isfinite(loss.detach()):
                    last = self.history[-1]["epoch"] if self.history else 0
                    raise DataError(f"the training loss became {float(loss.detach()):g} in epoch {epoch + 1}: training "
                                    f"diverged. Lower the learning rate (now {self.optimizer.param_groups[0]['lr']:g}) "
                                    f"or check the inputs; the run folder keeps the checkpoint of the last finished "
                                    f"epoch ({last}).")
                total, correct, seen = (total + float(loss.detach()) * len(y),
                                        correct + int((logits.argmax(1) == y).sum()), seen + len(y))
        bar.remove_task(task)
        if self.ddp is not None:
            total, correct, seen = self.dist.all_sum([total, correct, seen])
        return total / max(seen, 1), correct / max(seen, 1), int(seen)

    def forward(self, inputs: str, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if inputs == "features":
            return self.model.head(x)
        if inputs == "bags":
            return self.model(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.ddp(x) if self.ddp is not None and self.model.training else self.model(x)

    @torch.inference_mode()
    def evaluate(self, stage: Stage | None = None) -> tuple[float, float]:
        """Validation loss and accuracy, on ``stage``'s inputs (default: the current stage's)."""
        inputs = (stage or self.stage).inputs
        self.model.eval()
        total, correct, seen = 0.0, 0, 0
        for x, y in val_batches(self, inputs):
            if len(y):
                y = y.to(self.device)
                logits = self.forward(inputs, x).float()
                total += float(self.val_criterion(logits, y))
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
        if self.ddp is not None:  # each rank scored its shard of the validation images
            total, correct, seen = self.dist.all_sum([total, correct, seen])
        if seen == 0:
            raise DataError("no readable validation images")
        return total / seen, correct / seen
