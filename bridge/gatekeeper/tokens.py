"""Partner JWTs for our users (GIP §2): proof of the UVID, with the attested country."""

from __future__ import annotations

import time
from collections.abc import Callable

from bridge.db.logins import Login
from bridge.gip.tokens import SigningKey, issue_partner_token


class TokenIssuer:
    def __init__(
        self, key: SigningKey, *, integrator_id: str, audience: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.key = key
        self._integrator = integrator_id
        self._audience = audience
        self._clock = clock

    def for_login(self, login: Login) -> str:
        return issue_partner_token(
            self.key,
            integrator=self._integrator,
            uvid=login.uvid,
            audience=self._audience,
            country=login.country,
            now=self._clock(),
        )
