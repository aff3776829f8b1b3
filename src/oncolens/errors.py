"""One family of errors for problems a user can fix: bad data, bad configuration, missing weights,
an unreadable bundle. The CLI prints them as one line and exits 2, the API answers them with a 4xx;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["OncolensError", "DataError", "ConfigError", "BundleError", "InputNotFound", "OutputExists", "WeightsError"]


class OncolensError(Exception):
    """A user-facing problem; its message says what is wrong and, where it can, what to do."""


class DataError(OncolensError, ValueError):
    """The data (a manifest, an image, a split, labels) cannot be used as asked."""


class ConfigError(OncolensError, ValueError):
    """An option or configuration value is invalid."""


class BundleError(OncolensError, ValueError):
    """A model bundle is missing, unreadable or inconsistent."""


class InputNotFound(OncolensError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputExists(OncolensError, FileExistsError):
    """An output the user named already holds results that would be overwritten."""


class WeightsError(OncolensError, RuntimeError):
    """Pretrained weights cannot be had on this machine."""
