"""The bridge's configuration: loaded and upgraded with ruamel.yaml, checked up front.

Loading merges the admin's file into the current ``config.example.yaml`` (as mautrix
bridges do): keys the example gained appear in the admin's file with their comments,
the admin's values and comments are kept, and keys the example no longer has go. A
problem stops start-up with one line that names the key: ``database.uri: …``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import re
import secrets
from dataclasses import dataclass, field
from enum import Enum
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import YAMLError

EXAMPLE_PATH = Path(__file__).resolve().parent.parent / "config.example.yaml"
GENERATE = "generate"
EEA_COUNTRIES = frozenset(
    {
        *("AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE"),
        *("IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"),
        *("IS", "LI", "NO"),
    }
)
_LOCALPART = re.compile(r"^[a-z0-9._=\-/]+$")
# Maps whose keys are the admin's own (who may use the bridge, which module logs how much):
# merged whole, never key by key against the example.
FREE_FORM = ("permissions", "levels")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(Exception):
    """One configuration problem, phrased for the admin as ``key: problem``."""


class PermissionLevel(Enum):
    NONE = 0
    USER = 1
    ADMIN = 2


def _yaml() -> YAML:
    yaml = YAML()
    yaml.indent(mapping=4, sequence=4, offset=2)
    yaml.preserve_quotes = True
    return yaml


def merge_into_example(user: Any, example: CommentedMap) -> CommentedMap:
    """The example's structure and comments with the admin's values (and comments) in it."""
    merged = copy.deepcopy(example)
    if not isinstance(user, dict):
        return merged

    def walk(base: CommentedMap, theirs: dict[str, Any]) -> None:
        for key in list(base.keys()):
            if key not in theirs:
                continue
            if isinstance(base[key], dict) and isinstance(theirs[key], dict) and key not in FREE_FORM:
                walk(base[key], theirs[key])
            else:
                base[key] = theirs[key]
        # Free-form maps (permissions) keep exactly the admin's entries.

    walk(merged, user)
    if isinstance(user, CommentedMap):
        _copy_comments(user, merged)
    return merged


def _copy_comments(source: CommentedMap, target: CommentedMap) -> None:
    for key, comment in source.ca.items.items():
        if key in target:
            target.ca.items[key] = comment
    for key, value in source.items():
        if isinstance(value, CommentedMap) and isinstance(target.get(key), CommentedMap):
            _copy_comments(value, target[key])


@dataclass(frozen=True)
class EncryptionConfig:
    """``bridge.encryption``: end-to-bridge encryption of portal rooms."""

    allow: bool = False
    default: bool = False
    msc4190: bool = True
    self_sign: bool = True
    puppet_devices: bool = True
    key_wait_seconds: float = 20.0
    late_key_hours: float = 24.0
    rotation_messages: int = 100
    rotation_ms: int = 7 * 24 * 3600 * 1000


@dataclass(frozen=True)
class RetentionConfig:
    """``bridge.retention``: how long handled rows and sent contents are kept."""

    days: int = 7
    retry_hours: int = 24
    retry_messages: int = 1000


@dataclass(frozen=True)
class DeliveryConfig:
    """``bridge.delivery``: how one stored item is retried."""

    max_attempts: int = 5
    backoff_cap_seconds: float = 300.0


@dataclass(frozen=True)
class LimitsConfig:
    """``bridge.limits``: each user's own limits, below the gatekeeper's, so that one
    user who floods is stopped here before the gatekeeper acts against the integrator."""

    messages_per_minute: int = 300
    first_contacts_per_day: int = 50


@dataclass(frozen=True)
class ConnectionsConfig:
    """``gatekeeper.connections``: the users' chat connections."""

    max: int = 10000
    concurrent_connects: int = 50
    startup_spread_seconds: float = 20.0


@dataclass(frozen=True)
class MediaConfig:
    """``bridge.media``: files across the boundary."""

    directory: Path = Path("media")
    temp_directory: Path | None = None
    keep_days: int = 30
    quota_bytes: int | None = 2048 << 20  # per user in the store; None: no limit


@dataclass(frozen=True)
class StateNoticesConfig:
    """``bridge.state_notices``: what the bot tells users about their connection."""

    level: str = "errors"  # errors | all | none
    transient_delay_seconds: float = 180.0


@dataclass(frozen=True)
class MetricsConfig:
    """``metrics``: the Prometheus endpoint, off by default."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9139


@dataclass(frozen=True)
class BridgeConfig:
    homeserver_address: str
    homeserver_domain: str
    verify_ssl: bool
    appservice_address: str
    hostname: str
    port: int
    appservice_id: str
    bot_username: str
    bot_displayname: str
    username_template: str
    as_token: str
    hs_token: str
    database_uri: str
    max_connections: int
    profile: str
    gatekeeper_url: str
    gatekeeper_name: str
    gatekeeper_jwks_url: str
    gatekeeper_static_key: bytes | None = field(repr=False)
    integrator_id: str
    partner_public_url: str
    country: str
    eea_countries: frozenset[str]
    at_rest_key: bytes
    permissions: dict[str, PermissionLevel]
    log_level: str
    log_levels: dict[str, str] = field(default_factory=dict)  # logger name → level, over log_level
    encryption: EncryptionConfig = EncryptionConfig()
    retention: RetentionConfig = RetentionConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    limits: LimitsConfig = LimitsConfig()
    connections: ConnectionsConfig = ConnectionsConfig()
    media: MediaConfig = MediaConfig()
    metrics: MetricsConfig = MetricsConfig()
    state_notices: StateNoticesConfig = StateNoticesConfig()

    @property
    def bot_mxid(self) -> str:
        return f"@{self.bot_username}:{self.homeserver_domain}"

    def permission(self, mxid: str) -> PermissionLevel:
        """The most specific rule wins: the user, then their server, then ``*``."""
        if mxid in self.permissions:
            return self.permissions[mxid]
        domain = mxid.split(":", 1)[1] if ":" in mxid else ""
        if domain in self.permissions:
            return self.permissions[domain]
        return self.permissions.get("*", PermissionLevel.NONE)

    def puppet_localpart(self, uvid: str) -> str:
        escaped = "".join(c if c.isalnum() or c in "._-" else f"={ord(c):02x}" for c in uvid.lower())
        return self.username_template.replace("{uvid}", escaped)

    def uvid_of_puppet(self, mxid: str) -> str | None:
        """The identifier a puppet's Matrix ID was made from, or None for anyone else."""
        localpart, _, domain = mxid.removeprefix("@").partition(":")
        prefix, _, suffix = self.username_template.partition("{uvid}")
        if domain != self.homeserver_domain or not localpart.startswith(prefix) or not localpart.endswith(suffix):
            return None
        escaped = localpart[len(prefix) : len(localpart) - len(suffix)]
        return re.sub(r"=([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), escaped) or None


def _get(data: Any, path: str, kind: type | tuple[type, ...]) -> Any:
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{path}: is missing")
        node = node[part]
    if isinstance(node, bool) and kind in (int, (int,)):
        raise ConfigError(f"{path}: must be a whole number")
    if not isinstance(node, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{path}: must be a {names}, got {type(node).__name__}")
    return node


def _url(data: Any, path: str, schemes: tuple[str, ...] = ("http", "https")) -> str:
    value = _get(data, path, str)
    parsed = urlparse(value)
    if parsed.scheme not in schemes or not parsed.netloc:
        raise ConfigError(f"{path}: must be a {' or '.join(schemes)} URL, got {value!r}")
    return value.rstrip("/")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _gatekeeper_url(data: Any, path: str) -> str:
    """A URL of the gatekeeper's: https, or plain http only on this machine (the sandbox).
    The chat channel's Noise key is pinned, but tokens and keys travel over these too."""
    value = _url(data, path)
    parsed = urlparse(value)
    if parsed.scheme != "https" and not _is_loopback(parsed.hostname):
        raise ConfigError(f"{path}: must be an https URL (plain http only to a loopback address), got {value!r}")
    return value


def _static_key(data: Any, path: str, gatekeeper_url: str) -> bytes | None:
    """The pinned Noise key; it may be left empty only for a gatekeeper on this machine."""
    value = _get(data, path, str).strip()
    if not value and _is_loopback(urlparse(gatekeeper_url).hostname):
        return None
    try:
        key = base64.b64decode(
            value + "=" * (-len(value) % 4), altchars=b"-_" if "-" in value or "_" in value else None
        )
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f"{path}: must be the gatekeeper's Noise static public key, 32 bytes in base64 (from its Reference "
            "Offer; the sandbox prints its own at start)"
        )
    return key


def parse_config(data: Any, *, require_tokens: bool = True) -> BridgeConfig:
    """Check every value; raises ConfigError naming the first bad key."""
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping")
    port = _get(data, "appservice.port", int)
    if not 1 <= port <= 65535:
        raise ConfigError("appservice.port: must be between 1 and 65535")
    database_uri = _get(data, "database.uri", str)
    scheme = urlparse(database_uri).scheme
    if scheme not in ("postgres", "postgresql", "sqlite"):
        raise ConfigError(f"database.uri: must start with postgres:// or sqlite:///, got {scheme or 'nothing'}")
    profile = _get(data, "gatekeeper.profile", str)
    if profile not in ("whatsapp", "messenger"):
        raise ConfigError(f"gatekeeper.profile: must be whatsapp or messenger, got {profile!r}")
    tokens = {}
    for name in ("as_token", "hs_token"):
        value = _get(data, f"appservice.{name}", str)
        if require_tokens and (value == GENERATE or len(value) < 16):
            raise ConfigError(f"appservice.{name}: not set; run `python -m bridge -g` to generate the registration")
        tokens[name] = value
    raw_key = _get(data, "encryption_at_rest.key", str)
    key = b""
    if raw_key != GENERATE or require_tokens:
        try:
            key = base64.b64decode(raw_key, validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise ConfigError("encryption_at_rest.key: must be 32 bytes of base64; `python -m bridge -g` makes one")
    username = _get(data, "appservice.bot.username", str)
    if not _LOCALPART.match(username):
        raise ConfigError(f"appservice.bot.username: {username!r} is not a valid Matrix localpart")
    template = _get(data, "appservice.username_template", str)
    if template.count("{uvid}") != 1 or not _LOCALPART.match(template.replace("{uvid}", "x")):
        raise ConfigError("appservice.username_template: must contain {uvid} once and form a valid localpart")
    country = _get(data, "partner.country", str).upper()
    partner = data.get("partner", {})
    countries = partner.get("eea_countries", sorted(EEA_COUNTRIES)) if isinstance(partner, dict) else []
    if not isinstance(countries, list) or not all(isinstance(c, str) and len(c) == 2 for c in countries):
        raise ConfigError("partner.eea_countries: must be a list of ISO 3166 alpha-2 codes")
    eea = frozenset(c.upper() for c in countries)
    if country not in eea:
        raise ConfigError(f"partner.country: {country} is not in partner.eea_countries")
    permissions: dict[str, PermissionLevel] = {}
    raw_permissions = _get(data, "bridge.permissions", dict)
    for subject, level in raw_permissions.items():
        try:
            permissions[str(subject)] = PermissionLevel[str(level).upper()]
        except KeyError:
            raise ConfigError(f"bridge.permissions.{subject}: must be user, admin or none, got {level!r}") from None
    level = _get(data, "logging.level", str).upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"logging.level: must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    levels: dict[str, str] = {}
    for name, value in (_get(data, "logging.levels", dict) or {}).items():
        if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
            raise ConfigError(f"logging.levels.{name}: must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
        levels[str(name)] = value.upper()
    max_connections = _get(data, "database.max_connections", int)
    if max_connections < 1:
        raise ConfigError("database.max_connections: must be at least 1")
    gatekeeper_url = _gatekeeper_url(data, "gatekeeper.base_url")
    return BridgeConfig(
        encryption=_encryption(data),
        retention=RetentionConfig(
            days=_positive(data, "bridge.retention.days"),
            retry_hours=_positive(data, "bridge.retention.retry_hours"),
            retry_messages=_positive(data, "bridge.retention.retry_messages"),
        ),
        limits=LimitsConfig(
            messages_per_minute=_positive(data, "bridge.limits.messages_per_minute"),
            first_contacts_per_day=_positive(data, "bridge.limits.first_contacts_per_day"),
        ),
        delivery=DeliveryConfig(
            max_attempts=_positive(data, "bridge.delivery.max_attempts"),
            backoff_cap_seconds=float(_positive(data, "bridge.delivery.backoff_cap_seconds")),
        ),
        media=_media(data),
        metrics=_metrics(data),
        state_notices=_state_notices(data),
        connections=ConnectionsConfig(
            max=_positive(data, "gatekeeper.connections.max"),
            concurrent_connects=_positive(data, "gatekeeper.connections.concurrent_connects"),
            startup_spread_seconds=float(_get(data, "gatekeeper.connections.startup_spread_seconds", (int, float))),
        ),
        homeserver_address=_url(data, "homeserver.address"),
        homeserver_domain=_get(data, "homeserver.domain", str),
        verify_ssl=_get(data, "homeserver.verify_ssl", bool),
        appservice_address=_url(data, "appservice.address"),
        hostname=_get(data, "appservice.hostname", str),
        port=port,
        appservice_id=_get(data, "appservice.id", str),
        bot_username=username,
        bot_displayname=_get(data, "appservice.bot.displayname", str),
        username_template=template,
        as_token=tokens["as_token"],
        hs_token=tokens["hs_token"],
        database_uri=database_uri,
        max_connections=max_connections,
        profile=profile,
        gatekeeper_url=gatekeeper_url,
        gatekeeper_name=_get(data, "gatekeeper.name", str),
        gatekeeper_jwks_url=_gatekeeper_url(data, "gatekeeper.jwks_url"),
        gatekeeper_static_key=_static_key(data, "gatekeeper.static_key", gatekeeper_url),
        integrator_id=_get(data, "partner.integrator_id", str),
        partner_public_url=_url(data, "partner.public_url"),
        country=country,
        eea_countries=eea,
        at_rest_key=key,
        permissions=permissions,
        log_level=level,
        log_levels=levels,
    )


def _positive(data: Any, path: str) -> int:
    value = _get(data, path, int)
    if value < 1:
        raise ConfigError(f"{path}: must be at least 1")
    return value


def _metrics(data: Any) -> MetricsConfig:
    enabled = _get(data, "metrics.enabled", bool)
    listen = _get(data, "metrics.listen", str).strip()
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"metrics.listen: must be host:port, got {listen!r}")
    return MetricsConfig(enabled, host.strip("[]"), int(port))


def _state_notices(data: Any) -> StateNoticesConfig:
    level = _get(data, "bridge.state_notices.level", str)
    if level not in ("errors", "all", "none"):
        raise ConfigError(f"bridge.state_notices.level: must be errors, all or none, got {level!r}")
    delay = _get(data, "bridge.state_notices.transient_delay_seconds", (int, float))
    if isinstance(delay, bool) or delay < 0:
        raise ConfigError("bridge.state_notices.transient_delay_seconds: must be 0 or more")
    return StateNoticesConfig(level, float(delay))


def _media(data: Any) -> MediaConfig:
    directory = _get(data, "bridge.media.directory", str).strip()
    if not directory:
        raise ConfigError("bridge.media.directory: must name a directory")
    temp = _get(data, "bridge.media.temp_directory", str).strip()
    keep_days = _positive(data, "bridge.media.keep_days")
    if keep_days > 30:
        raise ConfigError("bridge.media.keep_days: the gatekeeper keeps media 30 days at most; use 30 or less")
    quota = _get(data, "bridge.media.quota_mib", int)
    if quota < 0:
        raise ConfigError("bridge.media.quota_mib: must be 0 (no limit) or more")
    return MediaConfig(Path(directory), Path(temp) if temp else None, keep_days, quota << 20 if quota else None)


def _encryption(data: Any) -> EncryptionConfig:
    allow = _get(data, "bridge.encryption.allow", bool)
    default = _get(data, "bridge.encryption.default", bool)
    if default and not allow:
        raise ConfigError("bridge.encryption.default: cannot be true while bridge.encryption.allow is false")
    wait = _get(data, "bridge.encryption.key_wait_seconds", (int, float))
    late = _get(data, "bridge.encryption.late_key_hours", (int, float))
    if isinstance(wait, bool) or not 0 < wait <= 600:
        raise ConfigError("bridge.encryption.key_wait_seconds: must be between 0 and 600")
    if isinstance(late, bool) or late < 0:
        raise ConfigError("bridge.encryption.late_key_hours: must not be negative")
    messages = _get(data, "bridge.encryption.rotation.messages", int)
    milliseconds = _get(data, "bridge.encryption.rotation.milliseconds", int)
    if messages < 1 or milliseconds < 60_000:
        raise ConfigError("bridge.encryption.rotation: at least 1 message and 60000 milliseconds")
    return EncryptionConfig(
        allow=allow,
        default=default,
        msc4190=_get(data, "bridge.encryption.msc4190", bool),
        self_sign=_get(data, "bridge.encryption.self_sign", bool),
        puppet_devices=_get(data, "bridge.encryption.puppet_devices", bool),
        key_wait_seconds=float(wait),
        late_key_hours=float(late),
        rotation_messages=messages,
        rotation_ms=milliseconds,
    )


def read_yaml(path: Path) -> Any:
    try:
        return _yaml().load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None


def dump_yaml(data: Any) -> str:
    out = StringIO()
    _yaml().dump(data, out)
    return out.getvalue()


def load_config(path: Path, example: Path = EXAMPLE_PATH, *, require_tokens: bool = True) -> tuple[BridgeConfig, Any]:
    """Read, upgrade (writing the file back if keys were added) and check the config."""
    user = read_yaml(path)
    merged = merge_into_example(user, read_yaml(example))
    text = dump_yaml(merged)
    if text != path.read_text():
        path.write_text(text)
    return parse_config(merged, require_tokens=require_tokens), merged


def generate_registration(path: Path, registration: Path, example: Path = EXAMPLE_PATH) -> BridgeConfig:
    """Fill in tokens and the at-rest key, write the appservice registration (``-g``)."""
    user = read_yaml(path)
    merged = merge_into_example(user, read_yaml(example))
    parse_config(merged, require_tokens=False)
    merged["appservice"]["as_token"] = secrets.token_urlsafe(48)
    merged["appservice"]["hs_token"] = secrets.token_urlsafe(48)
    if merged["encryption_at_rest"]["key"] in (GENERATE, "", None):
        merged["encryption_at_rest"]["key"] = base64.b64encode(secrets.token_bytes(32)).decode()
    config = parse_config(merged)
    path.write_text(dump_yaml(merged))
    domain = re.escape(config.homeserver_domain)
    puppets = re.escape(config.username_template).replace(re.escape("{uvid}"), ".+")
    document = {
        "id": config.appservice_id,
        "url": config.appservice_address,
        "as_token": config.as_token,
        "hs_token": config.hs_token,
        # A random sender, not the bot: the bot is an ordinary user in the namespace.
        "sender_localpart": secrets.token_hex(16),
        "rate_limited": False,
        "namespaces": {
            "users": [
                {"regex": f"^@{re.escape(config.bot_username)}:{domain}$", "exclusive": True},
                {"regex": f"^@{puppets}:{domain}$", "exclusive": True},
            ],
            "aliases": [],
            "rooms": [],
        },
        # Typing, receipts and presence reach the bridge (MSC2409).
        "de.sorunome.msc2409.push_ephemeral": True,
        "receive_ephemeral": True,
    }
    if config.encryption.allow:
        # To-device events, device lists and one-time key counts in transactions (MSC3202),
        # and the bridge's own device managed by the bridge (MSC4190).
        document["org.matrix.msc3202"] = True
        if config.encryption.msc4190:
            document["io.element.msc4190"] = True
    registration.write_text(dump_yaml(document))
    return config
