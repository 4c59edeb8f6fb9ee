"""The bridge configuration: upgrade with comments kept, clear errors, registration."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bridge.config import (
    EXAMPLE_PATH,
    ConfigError,
    PermissionLevel,
    dump_yaml,
    generate_registration,
    load_config,
    parse_config,
    read_yaml,
)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    shutil.copy(EXAMPLE_PATH, path)
    return path


def test_generate_fills_tokens_and_writes_registration(config_path: Path, tmp_path: Path) -> None:
    registration = tmp_path / "registration.yaml"
    config = generate_registration(config_path, registration)
    assert len(config.as_token) >= 40 and len(config.at_rest_key) == 32
    data = read_yaml(registration)
    assert data["as_token"] == config.as_token and data["hs_token"] == config.hs_token
    assert data["sender_localpart"] != "dmabot" and len(data["sender_localpart"]) == 32
    assert data["de.sorunome.msc2409.push_ephemeral"] is True and data["receive_ephemeral"] is True
    regexes = [ns["regex"] for ns in data["namespaces"]["users"]]
    assert all(ns["exclusive"] for ns in data["namespaces"]["users"])
    assert re.match(regexes[0], "@dmabot:example.org")
    assert re.match(regexes[1], "@dma_=2b4915112345678:example.org")
    assert not re.match(regexes[1], "@alice:example.org")
    # The tokens were written into the config, comments kept, and it now loads.
    loaded, _ = load_config(config_path)
    assert loaded.as_token == config.as_token
    assert "# The bridge bot: users talk to it" in config_path.read_text()


def test_upgrade_adds_new_keys_and_keeps_values_and_comments(config_path: Path, tmp_path: Path) -> None:
    generate_registration(config_path, tmp_path / "registration.yaml")
    text = config_path.read_text()
    # An admin's old file: a custom value with a comment, and a key this version dropped.
    text = text.replace("    max_connections: 10", "    max_connections: 25  # tuned for our server")
    text = text.replace("logging:\n", "obsolete_section:\n    x: 1\nlogging:\n")
    # ...and it predates a key that the example has now.
    text = text.replace("    verify_ssl: true\n", "")
    config_path.write_text(text)
    config, _ = load_config(config_path)
    upgraded = config_path.read_text()
    assert config.max_connections == 25
    assert "max_connections: 25  # tuned for our server" in upgraded
    assert "verify_ssl: true" in upgraded and config.verify_ssl is True
    assert "obsolete_section" not in upgraded


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("database", "uri", "mysql://x"),
            "database.uri: must start with postgres:// or sqlite:///, got mysql",
        ),
        (("appservice", "port", "80"), "appservice.port: must be a int, got str"),
        (("appservice", "port", 70000), "appservice.port: must be between 1 and 65535"),
        (
            ("gatekeeper", "profile", "signal"),
            "gatekeeper.profile: must be whatsapp or messenger, got 'signal'",
        ),
        (
            ("homeserver", "address", "localhost:8008"),
            "homeserver.address: must be a http or https URL, got 'localhost:8008'",
        ),
        (("partner", "country", "US"), "partner.country: US is not in partner.eea_countries"),
        (("logging", "level", "LOUD"), "logging.level: must be DEBUG, INFO, WARNING or ERROR, got 'LOUD'"),
        (
            ("appservice", "username_template", "dma"),
            "appservice.username_template: must contain {uvid} once and form a valid localpart",
        ),
    ],
)
def test_each_problem_is_one_line_naming_the_key(config_path: Path, tmp_path: Path, change, message: str) -> None:
    generate_registration(config_path, tmp_path / "registration.yaml")
    data = read_yaml(config_path)
    section, key, value = change
    data[section][key] = value
    with pytest.raises(ConfigError) as excinfo:
        parse_config(data)
    assert str(excinfo.value) == message


def test_state_notices_levels_and_delay(config_path: Path, tmp_path: Path) -> None:
    generate_registration(config_path, tmp_path / "registration.yaml")
    data = read_yaml(config_path)
    assert parse_config(data).state_notices.level == "errors"
    data["bridge"]["state_notices"]["level"] = "loud"
    with pytest.raises(ConfigError, match=r"bridge\.state_notices\.level: must be errors, all or none, got 'loud'"):
        parse_config(data)
    data["bridge"]["state_notices"].update(level="all", transient_delay_seconds=-1)
    with pytest.raises(ConfigError, match=r"bridge\.state_notices\.transient_delay_seconds: must be 0 or more"):
        parse_config(data)


def test_missing_tokens_explain_how_to_generate(config_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"appservice.as_token: not set; run `python -m bridge -g`"):
        load_config(config_path)


def test_permissions_most_specific_wins(config_path: Path, tmp_path: Path) -> None:
    generate_registration(config_path, tmp_path / "registration.yaml")
    data = read_yaml(config_path)
    data["bridge"]["permissions"] = {"*": "user", "evil.example": "superuser"}
    with pytest.raises(ConfigError, match=r"bridge\.permissions\.evil\.example: must be user, admin or none"):
        parse_config(data)
    data["bridge"]["permissions"] = {"*": "user", "evil.example": "none"}
    assert parse_config(data).permission("@spammer:evil.example") is PermissionLevel.NONE
    data["bridge"]["permissions"] = {"example.org": "user", "@boss:example.org": "admin"}
    config = parse_config(data)
    assert config.permission("@boss:example.org") is PermissionLevel.ADMIN
    assert config.permission("@alice:example.org") is PermissionLevel.USER
    assert config.permission("@mallory:elsewhere.org") is PermissionLevel.NONE
    data["bridge"]["permissions"]["*"] = "user"
    assert parse_config(data).permission("@mallory:elsewhere.org") is PermissionLevel.USER


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"allow": False}, "bridge.encryption.default: cannot be true while bridge.encryption.allow is false"),
        ({"key_wait_seconds": 0}, "bridge.encryption.key_wait_seconds: must be between 0 and 600"),
        ({"late_key_hours": -1}, "bridge.encryption.late_key_hours: must not be negative"),
        (
            {"rotation": {"messages": 0, "milliseconds": 60000}},
            "bridge.encryption.rotation: at least 1 message and 60000 milliseconds",
        ),
        ({"msc4190": "yes"}, "bridge.encryption.msc4190: must be a bool, got str"),
    ],
)
def test_encryption_problems_name_the_key(config_path: Path, tmp_path: Path, change: dict, message: str) -> None:
    generate_registration(config_path, tmp_path / "registration.yaml")
    data = read_yaml(config_path)
    data["bridge"]["encryption"].update(change)
    with pytest.raises(ConfigError) as excinfo:
        parse_config(data)
    assert str(excinfo.value) == message


def test_encryption_defaults_and_registration_flags(config_path: Path, tmp_path: Path) -> None:
    registration = tmp_path / "registration.yaml"
    config = generate_registration(config_path, registration)
    rules = config.encryption
    assert rules.allow and rules.default and rules.msc4190 and rules.self_sign and rules.puppet_devices
    assert (rules.rotation_messages, rules.rotation_ms) == (100, 604_800_000)
    data = read_yaml(registration)
    assert data["org.matrix.msc3202"] is True and data["io.element.msc4190"] is True

    # An appservice login instead of MSC4190, then no encryption at all: the flags follow.
    settings = read_yaml(config_path)
    settings["bridge"]["encryption"]["msc4190"] = False
    config_path.write_text(dump_yaml(settings))
    generate_registration(config_path, registration)
    data = read_yaml(registration)
    assert data["org.matrix.msc3202"] is True and "io.element.msc4190" not in data
    settings["bridge"]["encryption"].update(allow=False, default=False)
    config_path.write_text(dump_yaml(settings))
    config = generate_registration(config_path, registration)
    data = read_yaml(registration)
    assert not config.encryption.allow
    assert "org.matrix.msc3202" not in data and "io.element.msc4190" not in data


def test_the_gatekeeper_is_reached_over_tls_and_its_noise_key_is_pinned(tmp_path: Path) -> None:
    import base64

    data = read_yaml(EXAMPLE_PATH)
    assert parse_config(data, require_tokens=False).gatekeeper_static_key is None  # loopback: may be empty
    data["gatekeeper"]["base_url"] = "http://gatekeeper.example.com"
    with pytest.raises(ConfigError, match=r"gatekeeper\.base_url: must be an https URL"):
        parse_config(data, require_tokens=False)
    data["gatekeeper"]["base_url"] = "https://gatekeeper.example.com"
    with pytest.raises(ConfigError, match=r"gatekeeper\.static_key"):
        parse_config(data, require_tokens=False)
    data["gatekeeper"]["static_key"] = base64.b64encode(b"k" * 32).decode()
    data["gatekeeper"]["jwks_url"] = "http://[::2]/jwks"
    with pytest.raises(ConfigError, match=r"gatekeeper\.jwks_url"):
        parse_config(data, require_tokens=False)
    data["gatekeeper"]["jwks_url"] = "https://gatekeeper.example.com/jwks"
    assert parse_config(data, require_tokens=False).gatekeeper_static_key == b"k" * 32
    data["gatekeeper"]["static_key"] = "too short"
    with pytest.raises(ConfigError, match="32 bytes"):
        parse_config(data, require_tokens=False)
