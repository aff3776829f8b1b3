"""Training is a sequence of stages run by one loop (:mod:`.loop`).

A stage says what it trains and on what: which parameters its optimizer steps (none for a closed-form
fit), whether it reads the frozen backbone's cached features (on rank 0 alone) or images (every rank of a
distributed run), the range of epochs it runs, and how one epoch trains. The loop owns everything else:
devices, DDP, mixed precision, validation, the LR schedule, early stopping, the best weights and the
checkpoint (stage index + the stage's optimizer/scheduler state).

Registered stages: ``probe`` (the linear probe: L2 logistic regression fitted in closed form on cached
features), ``train`` (epochs of gradient steps: from scratch, or a frozen backbone's head on cached
features) and ``finetune`` (after the probe: unfreeze the last blocks and train them from images). A run's
stages come from ``TrainConfig.stages`` (default: from ``--head`` and ``--finetune``, see
:func:`default_stages`). A new stage is one class registered with :func:`register_stage`; name it in
``--stages``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .batches import FeatureInputs, ImageInputs, Inputs
from .config import TrainConfig
from .state import Batch

if TYPE_CHECKING:
    from .run import TrainingRun
    from .state import LoopState

__all__ = ["Stage", "ProbeStage", "TrainStage", "FinetuneStage", "BagStage", "STAGES", "register_stage", "default_stages",
           "stage_names", "make_optimizer", "EpochResult", "GradientSteps"]

#: what one epoch of a stage gives the loop: (mean loss, accuracy, images seen)
EpochResult = tuple[float, float, int]
#: the loop's epoch of gradient steps over a stage's batches (with the batch events, AMP and DDP)
GradientSteps = Callable[["Stage", int], EpochResult]


class Stage:
    """One stage of a run, built from the run (:class:`~.run.TrainingRun`) it belongs to: what it trains, on
    which :class:`~.batches.Inputs`, for which epochs, and its loss."""

    name = "stage"
    #: True: an epoch replaces the best weights of an earlier stage only when its validation loss is lower by
    #: more than one standard error of the paired per-image difference (the validation set's resolution)
    must_resolve = False

    def __init__(self, run: TrainingRun):
        self.config: TrainConfig = run.config
        #: what the stage trains on (default: the run's own inputs: images, cached features or bags)
        self.inputs: Inputs = run.inputs

    @property
    def distributed(self) -> bool:
        """Whether every rank of a distributed run takes part (stages on cached features run on rank 0)."""
        return self.inputs.distributed

    def epochs(self, state: LoopState) -> range:
        """The epoch numbers this stage runs (history rows are these + 1)."""
        return range(0, self.config.epochs)

    def start(self, state: LoopState) -> torch.optim.Optimizer | None:
        """Prepare the model for this stage; the optimizer the loop steps (None: nothing to step)."""
        return make_optimizer(state.model, self.config)

    def train_mode(self, state: LoopState) -> None:
        """Put the model's modules in the mode this stage trains them in."""
        state.model.train()

    def forward(self, state: LoopState, x: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of this stage's inputs."""
        return self.inputs.forward(state, x)

    def loss(self, state: LoopState, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The training loss of a batch: cross-entropy against its target, plus the head's own extra loss (e.g.
        CLAM's instance clustering)."""
        loss = state.run.criterion(logits.float(), batch.target)
        extra = getattr(state.model.head, "extra_loss", lambda target: None)(batch.y[0])
        return loss if extra is None else loss + extra

    def train_epoch(self, state: LoopState, epoch: int, steps: GradientSteps) -> EpochResult:
        """Train one epoch: by default the loop's gradient steps over this stage's batches."""
        return steps(self, epoch)


#: name -> stage class (built with the run)
STAGES: Registry[type[Stage]] = Registry("training stage")


#: class decorator: make a :class:`Stage` subclass available by its ``name`` (``STAGES.register(name, cls,
#: override=True)`` replaces one)
register_stage = STAGES.decorator()


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the model's trainable parameters (a head's L2 penalty as weight decay)."""
    l2 = set()
    head_l2 = getattr(model.head, "l2_parameters", None)
    groups = []
    if head_l2:
        params = [p for p in head_l2() if p.requires_grad]
        l2 = {id(p) for p in params}
        groups.append({"params": params, "weight_decay": config.weight_decay + model.head.l2})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in l2]
    groups.insert(0, {"params": rest, "weight_decay": config.weight_decay})
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)
    raise ConfigError(f"optimizer must be adam, adamw or sgd, got {config.optimizer!r}")


@register_stage
class ProbeStage(Stage):
    """The linear probe: one closed-form fit on the cached, un-augmented features (rank 0); in a run with
    later stages it is epoch 0 of the history, their starting point."""

    name = "probe"

    def __init__(self, run):
        super().__init__(run)
        self.inputs = FeatureInputs()
        if run.model.head.head_name != "logreg" or not run.model.backbone_frozen:
            raise ConfigError("the probe stage fits a logistic regression on frozen features: use --head logreg "
                              "--freeze frozen")

    def epochs(self, state):
        first = -1 if state.stages[-1] is not self else 0
        return range(first, first + 1)

    def start(self, state):
        return None

    def train_epoch(self, state, epoch, steps):
        from .linear_probe import fit_linear_probe, load_probe_into

        cfg, features = self.config, state.run.features
        x, y = features.train_views[0]
        frame = state.run.train_set.frame.iloc[features.train_kept]
        groups = frame["group"].astype(str).tolist() if "group" in frame.columns else None
        fit = fit_linear_probe(x.numpy(), y.numpy(), len(state.classes), groups, seed=cfg.seed,
                               class_weight="balanced" if cfg.class_weights else None)
        load_probe_into(state.model.head, fit)
        state.model.eval()
        with torch.no_grad():
            logits = state.model.head(x.to(state.device)).float()
            loss = float(nn.functional.cross_entropy(logits, y.to(state.device)))
            accuracy = float((logits.argmax(1).cpu() == y).float().mean())
        state.run.extra_metrics["linear_probe"] = {"C": fit.C, "cv_folds": fit.folds,
                                                   "grouped_by_patient": fit.grouped, "cv_log_loss_by_C": fit.cv_log_loss}
        state.console.print(f"linear probe: C={fit.C:.3g} chosen by {fit.folds}-fold "
                            f"{'patient-grouped ' if fit.grouped else ''}cross-validation on {len(y)} training images")
        return loss, accuracy, len(y)


@register_stage
class TrainStage(Stage):
    """Epochs of gradient steps: the whole model from images, or a frozen backbone's head on its cached
    features when the run has them."""

    name = "train"

    def train_mode(self, state):
        state.model.train()
        if self.inputs.cached:  # the backbone's part was computed once, in eval mode
            state.model.backbone.eval()


@register_stage
class FinetuneStage(Stage):
    """After the probe: unfreeze the last ``--finetune`` blocks and train them and the probe's head from
    images; an epoch is kept only if it beats the best validation loss so far (the probe's)."""

    name = "finetune"
    #: its epochs replace the probe only when the gain exceeds what the validation images can resolve
    must_resolve = True

    def __init__(self, run):
        super().__init__(run)
        self.inputs = ImageInputs()
        if self.config.finetune in (None, "off"):
            raise ConfigError("the finetune stage unfreezes --finetune last-N blocks: set --finetune")

    def start(self, state):
        from ..models.factory import apply_freeze

        apply_freeze(state.model, self.config.finetune)
        trainable = sum(p.numel() for p in state.model.parameters() if p.requires_grad)
        state.console.print(f"fine-tuning {self.config.finetune} ({trainable:,} parameters) at lr "
                            f"{self.config.lr:g}; an epoch is kept only if its validation loss beats the best so far "
                            f"({state.best_val:.4f})")
        return super().start(state)

    def train_mode(self, state):
        state.model.train()
        # batch-norm statistics stay those the probe was fitted on: batch statistics of small augmented
        # batches would shift the features under the probe's head (its affine weights still train)
        for module in state.model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


@register_stage
class BagStage(TrainStage):
    """Epochs of a bag classifier on its bags (the name runs on bags recorded before bags became the bag
    task's inputs of the ``train`` stage; kept so that they resume)."""

    name = "bags"


def default_stages(config: TrainConfig) -> list[str]:
    """The stages ``--head``/``--finetune`` imply: probe (``--head logreg``), then finetune
    (``--finetune last-N``); otherwise train."""
    probe = config.head == "logreg"
    finetune = config.finetune not in (None, "off")
    if finetune and not probe:
        raise ConfigError(f"--finetune {config.finetune} is the second stage after a linear probe (--head logreg); "
                          f"for one-stage training of the last blocks use --freeze {config.finetune}")
    return ["probe"] + (["finetune"] if finetune else []) if probe else ["train"]


def stage_names(config: TrainConfig) -> list[str]:
    """The run's stages in order: ``config.stages`` (comma-separated) or :func:`default_stages`."""
    if not config.stages:
        return default_stages(config)
    names = [name.strip() for name in config.stages.split(",") if name.strip()]
    for name in names:
        STAGES.get(name)  # an unknown name is a ConfigError listing the registered ones
    if not names:
        raise ConfigError("stages: name at least one stage")
    return names
