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
