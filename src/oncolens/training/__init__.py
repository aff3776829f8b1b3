"""Training: configuration, the trainer (early stopping, LR on plateau, checkpoints, resume), feature cache."""

from .._lazy import lazy_package

__all__ = [
    "EpochState",
    "FeatureCache",
    "RunResult",
    "TrainConfig",
    "compute_features",
    "load_config",
    "plot_training_curves",
    "resume",
    "train",
]

lazy_package(__name__, {
    "TrainConfig": ".config",
    "load_config": ".config",
    "FeatureCache": ".feature_cache",
    "compute_features": ".feature_cache",
    "EpochState": ".trainer",
    "RunResult": ".trainer",
    "plot_training_curves": ".trainer",
    "resume": ".trainer",
    "train": ".trainer",
})
