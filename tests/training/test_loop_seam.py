"""The training seam: callbacks see one typed state, declare what they need and provide (a wrong order is
refused when the run starts), and batch events let a small callback (mixup) change what every stage trains on."""

from types import SimpleNamespace

import pytest
import torch

from oncolens.data import save_manifest, split
from oncolens.errors import ConfigError
from oncolens.training import TrainConfig, train
from oncolens.training.callbacks import CALLBACKS, DEFAULT_CALLBACKS, Callback, Mixup, check_order


def test_the_default_callbacks_are_in_an_order_that_gives_each_what_it_needs():
    check_order([CALLBACKS.get(name)() for name in DEFAULT_CALLBACKS])


def test_a_card_before_its_calibration_is_refused():
    order = [CALLBACKS.get(name)() for name in ("history", "checkpoint", "bundle", "card", "calibration")]
    with pytest.raises(ConfigError, match="'card' needs 'calibration'.*put 'card' after 'calibration'"):
        check_order(order)


def test_a_callback_whose_need_nobody_provides_is_refused_before_any_epoch(phantom_manifest, tmp_path):
    class NeedsReport(Callback):
        name = "needs-report"
        needs = ("report",)

    csv = save_manifest(split(phantom_manifest, test=0.2, val=0.25, seed=0), tmp_path / "s.csv")
    with pytest.raises(ConfigError, match="'needs-report' needs 'report', but no callback of this run provides it"):
        train(TrainConfig(data=str(csv), model="seed_cnn", image_size=32, epochs=1, batch_size=8, augment=False,
                          recipe="off", runs_dir=str(tmp_path / "runs"), name="r"), callbacks=[NeedsReport()])
    assert not (tmp_path / "runs" / "r" / "history.csv").exists()


def test_only_callbacks_that_change_batches_run_on_the_other_ranks():
    from oncolens.distributed import Distributed
    from oncolens.training.loop import Loop

    run = SimpleNamespace(device=torch.device("cpu"))
    history, mixup = CALLBACKS.get("history")(), Mixup(0.3)
    assert Loop(run, [], [history, mixup], console=None, dist=Distributed(rank=1, world_size=2)).callbacks == [mixup]
    assert Loop(run, [], [history, mixup], console=None, dist=Distributed()).callbacks == [history, mixup]


def test_mixup_is_a_callback_on_the_loops_batches(phantom_manifest, tmp_path):
    """Mixup mixes each batch's images and one-hot targets with one Beta-drawn weight; the loop's gradient steps
    train on what it returns (the next callback sees the mixed batch, the loss uses the soft targets)."""

    class Spy(Callback):
        name = "spy"

        def __init__(self):
            self.batches = []

        def on_batch(self, state, batch):
            self.batches.append(batch)
            return batch

    csv = save_manifest(split(phantom_manifest, test=0.2, val=0.25, seed=0), tmp_path / "s.csv")
    spy = Spy()
    result = train(TrainConfig(data=str(csv), model="seed_cnn", image_size=32, epochs=1, batch_size=8, augment=False,
                               recipe="off", runs_dir=str(tmp_path / "runs"), name="mix", calibrate=False),
                   callbacks=[Mixup(0.4), spy])
    assert result.bundle_path.exists() and len(spy.batches) >= 3
    for batch in spy.batches:
        assert batch.target.shape == (len(batch.y), len(result.classes)) and batch.target.is_floating_point()
        assert torch.allclose(batch.target.sum(1), torch.ones(len(batch.y)))
        # every row mixes at most two classes, with the same weight (share, 1 - share) in the whole batch
        assert ((batch.target > 1e-6).sum(1) <= 2).all()
        mixed = batch.target[(batch.target > 1e-6) & (batch.target < 1 - 1e-6)]
        assert len(mixed) > 0, "no row of the batch was mixed"
        share = float(mixed.max())
        assert torch.allclose(torch.minimum(mixed, 1 - mixed), torch.full_like(mixed, 1 - share), atol=1e-5)
    with pytest.raises(ConfigError, match="alpha"):
        Mixup(0)


def test_the_loop_has_no_back_door_to_the_run():
    from oncolens.training.loop import Loop

    assert "__getattr__" not in vars(Loop)


def _loop_with_best(best_losses):
    from rich.console import Console

    from oncolens.distributed import Distributed
    from oncolens.training.loop import Loop

    loop = Loop(SimpleNamespace(device=torch.device("cpu")), [], [], console=Console(quiet=True), dist=Distributed())
    loop.state.best_stage, loop.state.best_losses = "probe", best_losses
    return loop


def test_a_later_stage_replaces_the_probe_only_by_a_gain_the_validation_images_resolve():
    from oncolens.training.loop import resolved

    """Fine-tuning's epoch must beat the probe's validation loss by more than one standard error of the paired
    per-image difference; a gain inside the noise keeps the probe (the grouped carve's 40 images)."""
    generator = torch.Generator().manual_seed(0)
    probe = torch.rand(40, generator=generator) + 0.5
    finetune = SimpleNamespace(name="finetune", must_resolve=True)
    noise = torch.randn(40, generator=generator)
    small = probe - 0.014 + noise * 0.3  # mean gain ~0.014, per-image spread 0.3: SE ~0.05
    assert not resolved(_loop_with_best(probe).state, finetune, float(small.mean()), small)
    large = probe - 0.2 + noise * 0.05  # gain 0.2, SE ~0.008
    assert resolved(_loop_with_best(probe).state, finetune, float(large.mean()), large)
    free = SimpleNamespace(name="train", must_resolve=False)
    assert resolved(_loop_with_best(probe).state, free, float(small.mean()), small)
