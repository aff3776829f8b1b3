import pytest

from oncolens.training import TrainConfig, load_config


def test_defaults_then_yaml_then_flags(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("model: seed_cnn\nepochs: 7\nlr: 0.01\n")
    cfg = load_config(file, epochs=3, lr=None)
    assert cfg.model == "seed_cnn"  # from YAML
    assert cfg.epochs == 3  # flag wins
    assert cfg.lr == 0.01  # an unset flag (None) does not override
    assert cfg.batch_size == TrainConfig().batch_size  # default


def test_unknown_options_rejected(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="unknown option"):
        load_config(file)
    with pytest.raises(ValueError, match="unknown option"):
        load_config(None, nonsense=1)


def test_round_trip_yaml(tmp_path):
    cfg = TrainConfig(model="seed_cnn", epochs=2)
    file = tmp_path / "c.yaml"
    file.write_text(cfg.to_yaml())
    assert load_config(file) == cfg
