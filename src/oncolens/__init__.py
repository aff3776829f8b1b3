"""oncolens: train, evaluate and explain deep-learning classifiers for cancer images."""

__version__ = "0.1.0"
