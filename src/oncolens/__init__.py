"""oncolens: train, evaluate and explain deep-learning classifiers for cancer images."""

try:  # written by setuptools-scm when the package is built or installed: the git tag, and the commit
    from ._version import __commit_id__, __version__
except ImportError:  # a source tree on the path that was never installed
    __version__, __commit_id__ = "0.0.0+unknown", None
