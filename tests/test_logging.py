"""Log levels per module from the config."""

from __future__ import annotations

import logging

import pytest

from bridge.__main__ import configure_logging
from bridge.config import EXAMPLE_PATH, ConfigError, parse_config, read_yaml


def _data() -> dict:
    data = read_yaml(EXAMPLE_PATH)
    data["appservice"]["as_token"] = data["appservice"]["hs_token"] = "x" * 32
    data["encryption_at_rest"]["key"] = "A" * 43 + "="
    return data


def test_levels_per_module_apply_over_the_global_level() -> None:
    data = _data()
    data["logging"]["levels"] = {"bridge.gatekeeper": "debug", "mau.crypto": "ERROR"}
    config = parse_config(data)
    assert config.log_levels == {"bridge.gatekeeper": "DEBUG", "mau.crypto": "ERROR"}
    configure_logging(config)
    assert logging.getLogger("bridge.gatekeeper.connections").getEffectiveLevel() == logging.DEBUG
    assert logging.getLogger("mau.crypto").getEffectiveLevel() == logging.ERROR
    logging.getLogger("bridge.gatekeeper").setLevel(logging.NOTSET)
    logging.getLogger("mau.crypto").setLevel(logging.NOTSET)


def test_a_bad_level_names_its_module() -> None:
    data = _data()
    data["logging"]["levels"] = {"bridge.core": "LOUD"}
    with pytest.raises(ConfigError, match=r"logging\.levels\.bridge\.core: must be DEBUG"):
        parse_config(data)


def test_an_upgrade_keeps_the_admins_levels(tmp_path) -> None:
    from bridge.config import dump_yaml, load_config

    data = _data()
    data["logging"]["levels"] = {"bridge.matrix.e2ee": "DEBUG"}
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(data))
    config, _ = load_config(path)
    assert config.log_levels == {"bridge.matrix.e2ee": "DEBUG"}  # not the example's own entries
