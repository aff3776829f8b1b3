"""The seeds' experiments as one-command studies, built only from the modules before this one."""

from .compare import compare_models, compare_pretraining
from .cv import cross_validate
from .hierarchy import hierarchy_study
from .runner import Job, run_jobs
from .transfer_matrix import transfer_matrix

__all__ = ["compare_models", "compare_pretraining", "cross_validate", "hierarchy_study", "Job", "run_jobs", "transfer_matrix"]
