"""oncolens's own phantoms: the folder layout plus the patient id in each filename."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .base import LayoutOptions, register_layout
from .folder import FolderLayout

MARKER_FILE = "PHANTOMS.json"
PATIENT_REGEX = r"^([a-z]+-P\d+)_"


@register_layout("phantoms")
class PhantomLayout(FolderLayout):
    description = "phantoms made by `oncolens phantoms` (organ/organ_class folders, patient in filename)"

    def detect(self, root: Path) -> float:
        return 1.0 if (root / MARKER_FILE).is_file() else 0.0

    def _with_groups(self, options: LayoutOptions) -> LayoutOptions:
        return replace(options, group_regex=options.group_regex or PATIENT_REGEX,
                       level_names=options.level_names or ("organ", "subclass"))

    def columns(self, root, options):
        return super().columns(root, self._with_groups(options))

    def candidates(self, root, options):
        return super().candidates(root, self._with_groups(options))
