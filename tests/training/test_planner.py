"""The planner: one place turns a configuration and the training images into a complete plan, each option
with its source."""

from oncolens.data import split
from oncolens.training import TrainConfig
from oncolens.training.config import PLAIN_DEFAULTS
from oncolens.training.tasks import plan_run

SETTLED = ("weights", "freeze", "device", "feature_cache", "num_workers", "name", *PLAIN_DEFAULTS)


def test_the_plan_settles_every_option_once_with_its_reason(phantom_manifest):
    frame = split(phantom_manifest, test=0.2, val=0.2, seed=0)
    plan = plan_run(TrainConfig(data="m.csv", epochs=2, model="seed_bn_cnn"), frame)
    for name in SETTLED:
        assert getattr(plan.config, name) not in (None, "auto"), name
    assert "epochs" not in plan.reasons and "model" not in plan.reasons  # the user's own values need no reason
    assert all(name in plan.reasons for name in SETTLED if name not in ("epochs", "model")), plan.reasons
    assert plan.reasons["weights"].startswith("auto:") and plan.config.weights == "random"
    assert plan.reasons["modality"].startswith("recipe:")
    record = plan.to_dict()
    assert set(record) >= {"chosen", "fingerprint", "settled"} and "device" in record["settled"]
    plain = plan_run(TrainConfig(data="m.csv", model="seed_bn_cnn", recipe="off"), frame)
    assert plain.reasons["lr"] == "plain default" and plain.config.lr == PLAIN_DEFAULTS["lr"]


def test_an_explicit_freeze_is_not_overruled_by_a_fine_tuning_stage(phantom_manifest, monkeypatch):
    """`train --freeze frozen --epochs 15` keeps the backbone frozen: the recipe adds no fine-tuning stage even
    where the data would allow one (here the threshold is lowered so the phantoms would)."""
    from oncolens.training import recipe

    monkeypatch.setattr(recipe, "FINETUNE_MIN_IMAGES", 10)
    monkeypatch.setattr(recipe, "FINETUNE_MIN_PER_CLASS", 1)
    frame = split(phantom_manifest, test=0.2, val=0.2, seed=0)
    chosen = plan_run(TrainConfig(data="m.csv"), frame)
    assert chosen.config.finetune == recipe.FINETUNE_BLOCKS and chosen.config.stages == "probe,finetune"
    frozen = plan_run(TrainConfig(data="m.csv", freeze="frozen", epochs=15), frame)
    assert frozen.config.finetune == "off" and frozen.config.stages == "probe" and frozen.config.epochs == 15
    assert "--freeze frozen" in frozen.reasons["finetune"]


def test_the_plan_names_its_task(phantom_manifest):
    frame = split(phantom_manifest, test=0.2, val=0.2, seed=0)
    assert plan_run(TrainConfig(data="m.csv", model="seed_cnn"), frame).task.name == "images"
