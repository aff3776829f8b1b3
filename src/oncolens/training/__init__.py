"""Training: configuration, the trainer (early stopping, LR on plateau, checkpoints, resume), feature cache."""

from .config import TrainConfig, load_config
from .feature_cache import FeatureCache, compute_features
from .trainer import EpochState, RunResult, plot_training_curves, resume, train

__all__ = ["EpochState", "FeatureCache", "RunResult", "TrainConfig", "compute_features", "load_config",
           "plot_training_curves", "resume", "train"]
