"""Tokens (§2): RS256 only, lifetimes, JWKS documents and the caching fetcher."""

from __future__ import annotations

import base64
import json

import jwt
import pytest

from bridge.gip.errors import GipError
from bridge.gip.tokens import (
    PARTNER_TOKEN_MAX_TTL,
    JwksFetcher,
    SigningKey,
    UnknownKeyIdError,
    issue_partner_token,
    jwks_document,
    parse_jwks,
    verify_token,
)

KEY = SigningKey.generate("k1")
NOW = 1_800_000_000


def _verify(token: str, keys=None, **kwargs):
    args = {
        "issuer": "bridge",
        "audience": "WHATSAPP",
        "max_ttl": PARTNER_TOKEN_MAX_TTL,
        "now": NOW,
        **kwargs,
    }
    return verify_token(token, keys if keys is not None else parse_jwks(jwks_document([KEY])), **args)


def _token(**kwargs) -> str:
    return issue_partner_token(
        KEY, integrator="bridge", uvid="@a:b", audience="WHATSAPP", country="DE", now=NOW, **kwargs
    )


def test_valid_partner_token() -> None:
    claims = _verify(_token())
    assert claims["sub"] == "@a:b"
    assert claims["loc"] == "DE"
    assert claims["exp"] - claims["iat"] <= 600


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_none_and_hs256_refused() -> None:
    claims = jwt.decode(_token(), options={"verify_signature": False})
    unsigned = f"{_b64({'alg': 'none', 'kid': 'k1'})}.{_b64(claims)}."
    with pytest.raises(GipError):
        _verify(unsigned)
    public_pem = KEY.private_key.public_key().public_bytes(
        __import__("cryptography.hazmat.primitives.serialization", fromlist=["Encoding"]).Encoding.PEM,
        __import__(
            "cryptography.hazmat.primitives.serialization", fromlist=["PublicFormat"]
        ).PublicFormat.SubjectPublicKeyInfo,
    )
    header = _b64({"alg": "HS256", "kid": "k1", "typ": "JWT"})
    body = _b64(claims)
    import hashlib
    import hmac

    signature = (
        base64.urlsafe_b64encode(hmac.digest(public_pem, f"{header}.{body}".encode(), hashlib.sha256))
        .rstrip(b"=")
        .decode()
    )
    with pytest.raises(GipError):
        _verify(f"{header}.{body}.{signature}")


def test_unknown_kid_wrong_audience_expired_and_too_long() -> None:
    other = SigningKey.generate("k2")
    with pytest.raises(UnknownKeyIdError):
        _verify(
            issue_partner_token(other, integrator="bridge", uvid="@a:b", audience="WHATSAPP", country="DE", now=NOW)
        )
    with pytest.raises(GipError):
        _verify(_token(), audience="MESSENGER")
    with pytest.raises(GipError):
        _verify(_token(), now=NOW + 700)
    long_lived = KEY.sign({"iss": "bridge", "aud": "WHATSAPP", "iat": NOW, "exp": NOW + 3600, "sub": "@a:b"})
    with pytest.raises(GipError):
        _verify(long_lived)
    with pytest.raises(GipError):
        _verify("x" * 5000)


def test_jwks_document_shape_and_parse() -> None:
    document = jwks_document([KEY])
    (jwk,) = document["keys"]
    assert {k: jwk[k] for k in ("kid", "kty", "alg", "use", "e")} == {
        "kid": "k1",
        "kty": "RSA",
        "alg": "RS256",
        "use": "sig",
        "e": "AQAB",
    }
    assert set(parse_jwks(json.dumps(document))) == {"k1"}
    assert parse_jwks({"keys": [{**jwk, "kty": "EC"}]}) == {}
    with pytest.raises(GipError):
        parse_jwks(b"not json")


async def test_fetcher_caches_and_refetches_on_unknown_kid() -> None:
    keys = [KEY]
    calls = []
    now = [0.0]

    async def fetch() -> bytes:
        calls.append(1)
        return json.dumps(jwks_document(keys)).encode()

    fetcher = JwksFetcher(fetch, ttl=3600, min_refetch=30, clock=lambda: now[0])
    args = {"issuer": "bridge", "audience": "WHATSAPP", "max_ttl": 600, "now": NOW}
    await fetcher.verify(_token(), **args)
    await fetcher.verify(_token(), **args)
    assert len(calls) == 1
    rotated = SigningKey.generate("k3")
    keys.append(rotated)
    token = issue_partner_token(rotated, integrator="bridge", uvid="@a:b", audience="WHATSAPP", country="DE", now=NOW)
    with pytest.raises(UnknownKeyIdError):
        await fetcher.verify(token, **args)  # within the refetch rate limit
    now[0] = 31
    assert (await fetcher.verify(token, **args))["sub"] == "@a:b"
    assert len(calls) == 2


async def test_a_flood_of_unknown_kids_makes_one_fetch_and_a_dead_jwks_is_unavailable() -> None:
    import asyncio

    from bridge.gip.tokens import JwksUnavailableError

    calls: list[int] = []
    now = [0.0]
    gate = asyncio.Event()
    failing = [False]

    async def fetch() -> bytes:
        calls.append(1)
        await gate.wait()
        if failing[0]:
            raise OSError("connection refused")
        return json.dumps(jwks_document([KEY])).encode()

    fetcher = JwksFetcher(fetch, ttl=3600, min_refetch=30, clock=lambda: now[0])
    args = {"issuer": "bridge", "audience": "WHATSAPP", "max_ttl": 600, "now": NOW}
    stranger = SigningKey.generate("bogus")
    bogus = issue_partner_token(stranger, integrator="bridge", uvid="@a:b", audience="WHATSAPP", country="DE", now=NOW)
    # 100 requests at once, before any key is known: one fetch, shared.
    flood = [asyncio.ensure_future(fetcher.verify(bogus, **args)) for _ in range(100)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*flood, return_exceptions=True)
    assert all(isinstance(r, UnknownKeyIdError) for r in results)
    assert len(calls) == 1, "single flight"
    # More of them later: refused from memory until the refetch interval has passed.
    for _ in range(100):
        with pytest.raises(UnknownKeyIdError):
            await fetcher.verify(bogus, **args)
    assert len(calls) == 1, "negative cache"
    assert (await fetcher.verify(_token(), **args))["sub"] == "@a:b"

    # A JWKS that cannot be reached: a typed error (503), once per interval.
    dead = JwksFetcher(fetch, ttl=3600, min_refetch=30, clock=lambda: now[0])
    failing[0] = True
    calls.clear()
    for _ in range(10):
        with pytest.raises(JwksUnavailableError):
            await dead.verify(_token(), **args)
    assert len(calls) == 1
    with pytest.raises(GipError):  # a malformed token never makes a fetch
        await dead.verify("not a token", **args)
    now[0] = 31
    failing[0] = False
    assert (await dead.verify(_token(), **args))["sub"] == "@a:b"
    assert len(calls) == 2


async def test_a_non_ascii_token_is_refused_and_a_new_key_during_an_outage_is_unavailable() -> None:
    from bridge.gip.tokens import JwksUnavailableError, token_key_id

    with pytest.raises(GipError):
        token_key_id("\udc80\udcff.abc.def")  # what aiohttp makes of raw bytes 0x80-0xff
    now = [0.0]
    up = [True]

    async def fetch() -> bytes:
        if not up[0]:
            raise OSError("unreachable")
        return json.dumps(jwks_document([KEY])).encode()

    fetcher = JwksFetcher(fetch, ttl=3600, min_refetch=30, clock=lambda: now[0])
    args = {"issuer": "bridge", "audience": "WHATSAPP", "max_ttl": 600, "now": NOW}
    await fetcher.verify(_token(), **args)
    up[0] = False
    now[0] = 31
    rotated = SigningKey.generate("k-new")
    token = issue_partner_token(rotated, integrator="bridge", uvid="@a:b", audience="WHATSAPP", country="DE", now=NOW)
    # Signed with a key the JWKS cannot be asked about now: try again later, not refused.
    with pytest.raises(JwksUnavailableError):
        await fetcher.verify(token, **args)
    with pytest.raises(JwksUnavailableError):
        await fetcher.verify(token, **args)
    assert (await fetcher.verify(_token(), **args))["sub"] == "@a:b", "the known key still works"
