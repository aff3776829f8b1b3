"""The task is chosen once, from the manifest, and a new kind of task is one registered class."""

import pandas as pd
import pytest

from oncolens.training.tasks import TASKS, BagTask, ImageTask, Task, task_for


def test_a_manifest_of_images_or_of_bags_chooses_its_task():
    images = pd.DataFrame({"path": ["a.png", "b.png"], "label": ["x", "y"]})
    bags = pd.DataFrame({"path": ["a.safetensors", "b.safetensors"], "label": ["x", "y"], "bag_source": ["a", "b"]})
    assert isinstance(task_for(images), ImageTask) and isinstance(task_for(bags), BagTask)
    assert task_for(bags).ensembles is False and task_for(images).embeds is True


def test_a_new_task_is_one_registered_class(monkeypatch):
    """A third kind (here: manifests with a ``stage`` target column, a regression of stage) is asked before the
    image task, which accepts every manifest, whatever order they were registered in."""

    class StageRegression(ImageTask):
        name = "stage-regression-test"
        fallback = False

        def accepts(self, frame):
            return "stage_value" in frame.columns

    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))  # registered for this test only
    TASKS.register(StageRegression.name, StageRegression())
    frame = pd.DataFrame({"path": ["a.png"], "label": ["x"], "stage_value": [2.0]})
    assert task_for(frame).name == "stage-regression-test"
    assert task_for(frame.drop(columns="stage_value")).name == "images"
    with pytest.raises(NotImplementedError):
        Task().accepts(frame)
