"""One family of errors for problems a user can fix: bad data, bad configuration, missing weights,
an unreadable bundle. The CLI prints them as one line and exits 2, the API answers them with a 4xx;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import warnings

__all__ = ["OncolensError", "DataError", "ConfigError", "BundleError", "InputNotFound", "OutputExists", "WeightsError",
           "renamed_keyword"]


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


def renamed_keyword(function: str, old: str, new: str, old_value, new_value):
    """The value of a keyword argument given under its old name ``old`` (with a DeprecationWarning pointing at
    the caller of ``function``), else the value given as ``new``. Old names stay accepted for one release."""
    if old_value is None:
        return new_value
    warnings.warn(f"{function}({old}=...) is now {new}=...; the old name goes in the next release",
                  DeprecationWarning, stacklevel=3)
    return old_value
