"""The sandbox's configuration, read from YAML; every error names the key at fault."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

PROFILES = ("whatsapp", "messenger")

# The EEA: the EU member states plus Iceland, Liechtenstein and Norway (RO 7.5.1).
EEA_COUNTRIES = frozenset(
    {
        *("AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE"),
        *("IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE"),
        *("IS", "LI", "NO"),
    }
)


class ConfigError(Exception):
    """A configuration problem, phrased for the admin: ``key: problem``."""


@dataclass(frozen=True)
class Integrator:
    id: str
    jwks_url: str
    push_url: str
    media_base: str


@dataclass(frozen=True)
class RateLimits:
    messages_per_minute: int = 600
    first_contacts_per_day: int = 100
    enlistments_per_hour: int = 100


@dataclass(frozen=True)
class Policies:
    opt_in_required: bool = True
    lookup_privacy: bool = True
    eea_countries: frozenset[str] = EEA_COUNTRIES
    mailbox_days: int = 30
    unenlist_after_days: int = 30
    one_connection_per_device: bool = True
    strict_proxy: bool = False
    rate_limits: RateLimits = field(default_factory=RateLimits)
    low_prekey_threshold: int = 10
    max_file_bytes: int = 100 * 1024 * 1024
    max_image_bytes: int = 16 * 1024 * 1024
    group_max_participants: int = 256
    group_admin_only: bool = True  # only admins add, remove, promote and demote


@dataclass(frozen=True)
class SandboxConfig:
    host: str = "127.0.0.1"
    port: int = 29400
    public_url: str = "http://127.0.0.1:29400"
    profile: str = "whatsapp"
    name: str = "WHATSAPP"
    database: str = "sandbox.db"
    media_dir: str = "sandbox-media"
    control_token: str = ""
    integrators: tuple[Integrator, ...] = ()
    policies: Policies = field(default_factory=Policies)

    def integrator(self, integrator_id: str) -> Integrator | None:
        for integrator in self.integrators:
            if integrator.id == integrator_id:
                return integrator
        return None


def _take(data: dict[str, Any], key: str, kind: type, default: Any, path: str) -> Any:
    value = data.get(key, default)
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{path}{key}: must be a whole number")
    if not isinstance(value, kind):
        raise ConfigError(f"{path}{key}: must be a {kind.__name__}, got {type(value).__name__}")
    return value


def parse_config(data: Any) -> SandboxConfig:
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping")
    server = data.get("server", {}) or {}
    if not isinstance(server, dict):
        raise ConfigError("server: must be a mapping")
    profile = _take(data, "profile", str, "whatsapp", "")
    if profile not in PROFILES:
        raise ConfigError(f"profile: must be one of {', '.join(PROFILES)}, got {profile!r}")
    token = _take(data, "control_token", str, "", "")
    if len(token) < 16:
        raise ConfigError("control_token: must be at least 16 characters")
    integrators = []
    for index, raw in enumerate(data.get("integrators", []) or []):
        path = f"integrators[{index}]."
        if not isinstance(raw, dict):
            raise ConfigError(f"integrators[{index}]: must be a mapping")
        integrators.append(
            Integrator(
                id=_take(raw, "id", str, None, path),
                jwks_url=_take(raw, "jwks_url", str, None, path),
                push_url=_take(raw, "push_url", str, None, path),
                media_base=_take(raw, "media_base", str, None, path).rstrip("/"),
            )
        )
    raw_policies = data.get("policies", {}) or {}
    if not isinstance(raw_policies, dict):
        raise ConfigError("policies: must be a mapping")
    raw_limits = raw_policies.get("rate_limits", {}) or {}
    countries = raw_policies.get("eea_countries", sorted(EEA_COUNTRIES))
    if not isinstance(countries, list) or not all(isinstance(c, str) and len(c) == 2 for c in countries):
        raise ConfigError("policies.eea_countries: must be a list of ISO 3166 alpha-2 codes")
    limits = RateLimits(
        messages_per_minute=_take(raw_limits, "messages_per_minute", int, 600, "policies.rate_limits."),
        first_contacts_per_day=_take(raw_limits, "first_contacts_per_day", int, 100, "policies.rate_limits."),
        enlistments_per_hour=_take(raw_limits, "enlistments_per_hour", int, 100, "policies.rate_limits."),
    )
    p = "policies."
    policies = Policies(
        opt_in_required=_take(raw_policies, "opt_in_required", bool, True, p),
        lookup_privacy=_take(raw_policies, "lookup_privacy", bool, True, p),
        eea_countries=frozenset(c.upper() for c in countries),
        mailbox_days=_take(raw_policies, "mailbox_days", int, 30, p),
        unenlist_after_days=_take(raw_policies, "unenlist_after_days", int, 30, p),
        one_connection_per_device=_take(raw_policies, "one_connection_per_device", bool, True, p),
        strict_proxy=_take(raw_policies, "strict_proxy", bool, False, p),
        rate_limits=limits,
        low_prekey_threshold=_take(raw_policies, "low_prekey_threshold", int, 10, p),
        max_file_bytes=_take(raw_policies, "max_file_bytes", int, 100 * 1024 * 1024, p),
        max_image_bytes=_take(raw_policies, "max_image_bytes", int, 16 * 1024 * 1024, p),
        group_max_participants=_take(raw_policies, "group_max_participants", int, 256, p),
        group_admin_only=_take(raw_policies, "group_admin_only", bool, True, p),
    )
    port = _take(server, "port", int, 29400, "server.")
    if not 0 <= port <= 65535:
        raise ConfigError("server.port: must be between 0 and 65535")
    host = _take(server, "host", str, "127.0.0.1", "server.")
    return SandboxConfig(
        host=host,
        port=port,
        public_url=_take(server, "public_url", str, f"http://{host}:{port}", "server.").rstrip("/"),
        profile=profile,
        name=_take(data, "name", str, "WHATSAPP" if profile == "whatsapp" else "MESSENGER", ""),
        database=_take(data, "database", str, "sandbox.db", ""),
        media_dir=_take(data, "media_dir", str, "sandbox-media", ""),
        control_token=token,
        integrators=tuple(integrators),
        policies=policies,
    )


def load_config(path: Path) -> SandboxConfig:
    try:
        data = YAML(typ="safe").load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    return parse_config(data)
