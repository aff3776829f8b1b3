import inspect

import pytest

from oncolens.studies import Job, compare_models, compare_pretraining, cross_validate, hierarchy_study, run_jobs, \
    transfer_matrix


def _square(x: int) -> int:
    return x * x


def test_runs_in_parallel_are_jobs_as_the_command_line_says(tmp_path):
    """``--jobs`` is how many runs go at a time, ``--workers`` how many processes decode images: the studies say
    ``jobs=`` too, and ``workers=`` (their old name for it) warns for one release."""
    for study in (cross_validate, compare_models, compare_pretraining, hierarchy_study, transfer_matrix, run_jobs):
        parameters = inspect.signature(study).parameters
        assert parameters["jobs"].default == 1, study.__name__
        assert parameters["workers"].kind is inspect.Parameter.KEYWORD_ONLY, study.__name__
        assert parameters["workers"].default is None, study.__name__
    queue = [Job(f"square {x}", _square, {"x": x}, done=tmp_path / f"{x}.done") for x in (2, 3)]
    logged = []
    assert run_jobs(queue[:1], jobs=1, log=logged.append) == {"square 2": 4}
    with pytest.warns(DeprecationWarning, match=r"run_jobs\(workers=...\) is now jobs="):
        assert run_jobs(queue, workers=1, log=logged.append) == {"square 3": 9}  # the first is done: skipped
    assert logged == ["run square 2", "skip square 2: already done", "run square 3"]
    with pytest.warns(DeprecationWarning, match=r"transfer_matrix\(workers=...\) is now jobs="):
        with pytest.raises(FileNotFoundError):
            transfer_matrix(tmp_path / "missing.csv", tmp_path / "study", workers=2)
