"""The seeds' experiments as one-command studies, built only from the modules before this one."""

from .._lazy import lazy_package

__all__ = [
    "compare_models",
    "compare_pretraining",
    "cross_validate",
    "hierarchy_study",
    "Job",
    "run_jobs",
    "transfer_matrix",
]

lazy_package(__name__, {
    "compare_models": ".compare",
    "compare_pretraining": ".compare",
    "cross_validate": ".cv",
    "hierarchy_study": ".hierarchy",
    "Job": ".runner",
    "run_jobs": ".runner",
    "transfer_matrix": ".transfer_matrix",
})
