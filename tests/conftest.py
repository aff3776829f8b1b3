import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A small phantom dataset (48 images, 48 px), made once per test session."""
    from oncolens.data import generate_phantoms

    return generate_phantoms(tmp_path_factory.mktemp("phantoms"), n=48, size=48, seed=0, per_patient=3)


@pytest.fixture(scope="session")
def phantom_manifest(phantom_dir) -> pd.DataFrame:
    from oncolens.data import scan

    return scan(phantom_dir).manifest
