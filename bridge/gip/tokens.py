"""Partner and gatekeeper JWTs, JWKS documents, and a caching JWKS fetcher (§2).

Only RS256 is accepted: ``none``, HS256 (the key-confusion attack) and any other ``alg``
are refused before a key is even looked up, and a ``kid`` that the key set lacks is
refused too (the fetcher refetches once, rate-limited, before giving up). Time checks use
the caller's clock, so that the sandbox's injectable clock governs expiry.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from .errors import GipError, GipErrorCode

ALGORITHM = "RS256"
PARTNER_TOKEN_MAX_TTL = 600
GATEKEEPER_TOKEN_MAX_TTL = 3600
MAX_TOKEN_BYTES = 4096
CLOCK_SKEW = 60


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey = field(repr=False)

    @classmethod
    def generate(cls, kid: str | None = None) -> SigningKey:
        return cls(
            kid or secrets.token_hex(8),
            rsa.generate_private_key(public_exponent=65537, key_size=2048),
        )

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, kid: str, pem: bytes) -> SigningKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise GipError(GipErrorCode.TOKEN, "signing key must be RSA")
        return cls(kid, key)

    def public_jwk(self) -> dict[str, str]:
        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {
            "kid": self.kid,
            "kty": "RSA",
            "alg": ALGORITHM,
            "use": "sig",
            "n": jwk["n"],
            "e": jwk["e"],
        }

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.private_key, algorithm=ALGORITHM, headers={"kid": self.kid})


def jwks_document(keys: list[SigningKey]) -> dict[str, list[dict[str, str]]]:
    return {"keys": [k.public_jwk() for k in keys]}


def parse_jwks(document: dict[str, Any] | str | bytes) -> dict[str, rsa.RSAPublicKey]:
    """The RS256 signing keys of a JWKS document, by ``kid``; other keys are ignored."""
    try:
        data = json.loads(document) if isinstance(document, str | bytes) else document
        keys: dict[str, rsa.RSAPublicKey] = {}
        for jwk in data["keys"]:
            if jwk.get("kty") != "RSA" or jwk.get("alg", ALGORITHM) != ALGORITHM:
                continue
            if jwk.get("use", "sig") != "sig" or not isinstance(jwk.get("kid"), str):
                continue
            key = RSAAlgorithm.from_jwk(jwk)
            if isinstance(key, rsa.RSAPublicKey):
                keys[jwk["kid"]] = key
        return keys
    except (ValueError, KeyError, TypeError) as exc:
        raise GipError(GipErrorCode.TOKEN, "malformed JWKS document") from exc


def issue_partner_token(
    key: SigningKey,
    *,
    integrator: str,
    uvid: str,
    audience: str,
    country: str,
    now: float | None = None,
    ttl: int = PARTNER_TOKEN_MAX_TTL,
) -> str:
    """The Partner JWT that proves a user's UVID (``loc`` = attested ISO 3166 country)."""
    issued = int(now if now is not None else time.time())
    return key.sign(
        {
            "iss": integrator,
            "sub": uvid,
            "aud": audience,
            "iat": issued,
            "exp": issued + min(ttl, PARTNER_TOKEN_MAX_TTL),
            "jti": secrets.token_hex(12),
            "loc": country,
        }
    )


def issue_gatekeeper_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str,
    now: float | None = None,
    ttl: int = GATEKEEPER_TOKEN_MAX_TTL,
    subject: str | None = None,
) -> str:
    """The gatekeeper's bearer token for push and media fetches."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "iat": issued,
        "exp": issued + min(ttl, GATEKEEPER_TOKEN_MAX_TTL),
    }
    if subject is not None:
        claims["sub"] = subject
    return key.sign(claims)


class UnknownKeyIdError(GipError):
    def __init__(self, kid: str) -> None:
        super().__init__(GipErrorCode.TOKEN, "token signed with an unknown key id")
        self.kid = kid


def token_key_id(token: str) -> str:
    """The ``kid`` of a token whose header is acceptable; refuses every other ``alg``."""
    if len(token) > MAX_TOKEN_BYTES:
        raise GipError(GipErrorCode.TOKEN, "token larger than 4 KiB")
    if not token.isascii():  # a JWT is ASCII; anything else (lone surrogates too) is refused here
        raise GipError(GipErrorCode.TOKEN, "malformed token")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise GipError(GipErrorCode.TOKEN, "malformed token") from exc
    if header.get("alg") != ALGORITHM:
        raise GipError(GipErrorCode.TOKEN, "token algorithm must be RS256")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise GipError(GipErrorCode.TOKEN, "token has no key id")
    return kid


def verify_token(
    token: str,
    keys: dict[str, rsa.RSAPublicKey],
    *,
    issuer: str,
    audience: str,
    max_ttl: int,
    now: float,
    required: tuple[str, ...] = ("iss", "aud", "iat", "exp"),
) -> dict[str, Any]:
    """Verify signature, issuer, audience and lifetime against ``now``.

    Raises:
        UnknownKeyIdError: the ``kid`` is not in ``keys`` (refetch, then retry).
        GipError: code TOKEN for every other failure.
    """
    kid = token_key_id(token)
    key = keys.get(kid)
    if key is None:
        raise UnknownKeyIdError(kid)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=issuer,
            options={
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
                "require": list(required),
            },
        )
    except jwt.PyJWTError as exc:
        raise GipError(GipErrorCode.TOKEN, f"token rejected: {type(exc).__name__}") from exc
    issued, expires = claims.get("iat"), claims.get("exp")
    if not isinstance(issued, int) or not isinstance(expires, int):
        raise GipError(GipErrorCode.TOKEN, "token times must be integers")
    if expires - issued > max_ttl:
        raise GipError(GipErrorCode.TOKEN, "token lifetime is too long")
    if now >= expires + CLOCK_SKEW or now < issued - CLOCK_SKEW:
        raise GipError(GipErrorCode.TOKEN, "token expired or not yet valid")
    return claims


class JwksUnavailableError(GipError):
    """The peer's JWKS could not be fetched: the request cannot be judged now (503)."""

    def __init__(self, reason: str) -> None:
        super().__init__(GipErrorCode.UNAVAILABLE, f"the peer's JWKS cannot be fetched: {reason}")


class JwksFetcher:
    """Caches a peer's JWKS; refetches when stale or on an unknown ``kid``.

    Unauthenticated requests drive it (any ``/push`` names a ``kid``), so it never lets
    them drive the peer: one fetch at a time, shared by every caller that waits for it
    (single flight); at most one fetch per ``min_refetch`` seconds whatever the outcome;
    a ``kid`` that a fetch did not bring is refused from memory until the next one
    (negative cache); and a failed fetch raises :class:`JwksUnavailableError`, never
    whatever the transport raised.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[bytes]],
        *,
        ttl: float = 3600,
        min_refetch: float = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._min_refetch = min_refetch
        self._clock = clock
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last fetch, whatever its outcome
        self._failure: str | None = None  # why the last fetch failed, if it did
        self._flight: asyncio.Future[None] | None = None
        self.fetch_count = 0

    async def _refresh(self) -> None:
        """Fetch, or join the fetch under way."""
        if self._flight is None:
            self._flight = asyncio.ensure_future(self._fetch_once())
        flight = self._flight
        await asyncio.shield(flight)

    async def _fetch_once(self) -> None:
        self._tried_at = self._clock()
        self.fetch_count += 1
        try:
            self._keys = parse_jwks(await self._fetch())
            self._fetched_at = self._tried_at
            self._failure = None
        except asyncio.CancelledError:
            self._failure = "cancelled"
            raise
        except Exception as exc:  # any transport or parse failure: judged below
            self._failure = type(exc).__name__ if not isinstance(exc, GipError) else exc.text
        finally:
            self._flight = None

    def _may_fetch(self) -> bool:
        return self._tried_at is None or self._clock() - self._tried_at >= self._min_refetch

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at > self._ttl

    async def keys(self) -> dict[str, rsa.RSAPublicKey]:
        if self._flight is not None or (self._stale() and self._may_fetch()):
            await self._refresh()
        if self._fetched_at is None:
            raise JwksUnavailableError(self._failure or "not fetched yet")
        return self._keys

    async def verify(self, token: str, **kwargs: Any) -> dict[str, Any]:
        """:func:`verify_token` against the cached keys, refetching on an unknown ``kid``.

        Raises:
            JwksUnavailableError: no keys could be fetched (answer 503).
            GipError: the token is refused (answer 401).
        """
        token_key_id(token)  # a malformed token never reaches the fetcher
        keys = await self.keys()
        try:
            return verify_token(token, keys, **kwargs)
        except UnknownKeyIdError:
            if self._flight is None and not self._may_fetch():
                if self._failure is not None:
                    raise JwksUnavailableError(self._failure) from None  # perhaps a new key we cannot fetch
                raise  # negative cache: the last fetch did not bring this kid
            await self._refresh()
            try:
                return verify_token(token, self._keys, **kwargs)
            except UnknownKeyIdError:
                if self._failure is not None:
                    raise JwksUnavailableError(self._failure) from None
                raise
