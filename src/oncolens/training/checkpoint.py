"""The training loop's files: the best weights (``best.safetensors``) and the checkpoint (``checkpoint.pt``): the stage's index and name, its last finished epoch, the
model, the stage's optimizer and scheduler state, and the loop's counters; read with ``weights_only=True``.

Checkpoints written before training became stages (a flat layout whose ``stage`` was ``"probe"``,
``"train"`` or ``"finetune"``, without ``format``) are read into this layout, so those runs still resume.
"""

from __future__ import annotations

import io
from pathlib import Path

from typing import TYPE_CHECKING

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ..errors import DataError
from ..files import atomic_write, atomic_write_bytes

if TYPE_CHECKING:
    from .state import LoopState

__all__ = ["save_checkpoint", "load_checkpoint", "save_best", "load_best", "read_checkpoint", "FORMAT"]

#: the layout version written now (1: the flat layout before stages, which carried no version)
FORMAT = 2


def save_best(loop: LoopState) -> None:
    """The loop's model as the run's best weights (rank 0)."""
    if loop.dist.is_main:
        state = {k: v.detach().cpu().contiguous() for k, v in loop.model.state_dict().items()}
        atomic_write(loop.run_dir / "best.safetensors", lambda tmp: save_file(state, str(tmp)))


def load_best(loop: LoopState) -> None:
    loop.model.load_state_dict(load_file(str(loop.run_dir / "best.safetensors")))


def save_checkpoint(loop: LoopState, epoch: int) -> None:
    """``checkpoint.pt`` after ``epoch`` of the loop's stage: its index and state, and the loop's counters."""
    state = {"optimizer": loop.optimizer.state_dict(), "scheduler": loop.scheduler.state_dict()} \
        if loop.optimizer is not None else {}
    fields = dict(format=FORMAT, stage_index=loop.stage_index, stage=loop.stage.name, epoch=epoch,
                  model=loop.model.state_dict(), stage_state=state, scaler=loop.scaler.state_dict() if loop.scaler else {},
                  best_val=loop.best_val, best_epoch=loop.best_epoch, best_stage=loop.best_stage,
                  bad_epochs=loop.bad_epochs, history_rows=len(loop.history),
                  best_losses=loop.best_losses if loop.best_losses is not None else torch.zeros(0))
    buffer = io.BytesIO()
    torch.save(fields, buffer)
    atomic_write_bytes(loop.run_dir / "checkpoint.pt", buffer.getvalue())


def load_checkpoint(loop: LoopState) -> None:
    """Put the loop where ``checkpoint.pt`` left it (this layout, or the one written before stages): the
    model, counters and history now; the stage's state when the loop starts that stage."""
    state = read_checkpoint(loop.run_dir / "checkpoint.pt", [s.name for s in loop.stages], loop.device)
    loop.model.load_state_dict(state["model"])
    if loop.scaler and state["scaler"]:
        loop.scaler.load_state_dict(state["scaler"])
    loop.best_val, loop.best_epoch, loop.best_stage, loop.bad_epochs = (
        state["best_val"], state["best_epoch"], state["best_stage"], state["bad_epochs"])
    best_losses = state.get("best_losses")  # absent from checkpoints written before it was kept
    loop.best_losses = best_losses.cpu() if best_losses is not None and len(best_losses) else None
    loop.resume_at = (state["stage_index"], state["epoch"] + 1, state["stage_state"])
    history_file = loop.run_dir / "history.csv"
    loop.history = (pd.read_csv(history_file).to_dict("records")[:state["history_rows"]]
                    if history_file.exists() else [])


def read_checkpoint(path: Path, stage_names: list[str], device: torch.device) -> dict:
    """The checkpoint at ``path`` of a run whose stages are ``stage_names``, in this format; a DataError
    saying what to do when it is damaged or does not match the run."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        state = state if state.get("format") == FORMAT else _from_flat(state, stage_names)
    except Exception as exc:  # empty, truncated or foreign files raise many types inside torch.load
        size = path.stat().st_size if path.exists() else 0
        raise DataError(f"{path} ({size} bytes) is damaged and cannot be resumed from "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}). "
                        f"Start the run again under another --name, or delete {path.parent}.") from None
    if not 0 <= state["stage_index"] < len(stage_names) or stage_names[state["stage_index"]] != state["stage"]:
        raise DataError(f"{path} was written by stage {state['stage']!r}, which this run's stages "
                        f"({', '.join(stage_names)}) do not hold at position {state['stage_index']}")
    return state


def _from_flat(state: dict, names: list[str]) -> dict:
    """The layout before stages: ``stage`` probe/train/finetune, the optimizer at the top level; the probe
    of a two-stage run was epoch -1 and its optimizer unused."""
    stage = state["stage"]
    two_stage = names[0] == "probe" and len(names) > 1
    probe_best = names[0] == "probe" and state["best_epoch"] < (0 if two_stage else 1)
    return {"stage_index": names.index(stage), "stage": stage, "epoch": int(state["epoch"]), "model": state["model"],
            "stage_state": {} if stage == "probe" else {"optimizer": state["optimizer"],
                                                        "scheduler": state["scheduler"]},
            "scaler": state.get("scaler") or {}, "best_val": state["best_val"], "best_epoch": state["best_epoch"],
            "best_stage": "probe" if probe_best else stage, "bad_epochs": state["bad_epochs"],
            "history_rows": int(state["epoch"]) + 1 + (1 if two_stage else 0)}
