import pytest

from graft.config import GraftConfig
from graft.errors import ConfigError


def test_yaml_round_trip(tmp_path):
    config = GraftConfig().updated({"head.epochs": 40, "backbone.pooling": "max"})
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    assert GraftConfig.from_yaml(path) == config


def test_unknown_keys_are_refused_with_the_known_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("head:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="epoch"):
        GraftConfig.from_yaml(path)
    with pytest.raises(ConfigError, match=r"head\.epochs"):
        GraftConfig().updated({"head.epoch": 3})


def test_seed_defaults():
    head = GraftConfig().head
    assert (head.hidden_layers, head.width, head.activation, head.dropout) == (3, 512, "selu", 0.5)
    assert GraftConfig().data.val_fraction == 0.25
