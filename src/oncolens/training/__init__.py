"""Training: configuration, the trainer (early stopping, LR on plateau, checkpoints, resume), feature cache."""

from .._lazy import lazy_package

__all__ = [
    "CALLBACKS",
    "Callback",
    "register_callback",
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
    "CALLBACKS": ".callbacks",
    "Callback": ".callbacks",
    "register_callback": ".callbacks",
    "TrainConfig": ".config",
    "load_config": ".config",
    "FeatureCache": ".feature_cache",
    "compute_features": ".feature_cache",
    "EpochState": ".callbacks",
    "RunResult": ".trainer",
    "plot_training_curves": ".callbacks",
    "resume": ".trainer",
    "train": ".trainer",
})
