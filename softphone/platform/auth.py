"""The user token cache: authorize once, reuse until shortly before expiry.

The contract asks clients to cache ``token_key`` until ``expiry_date`` instead
of re-authorizing per call.  Many coroutines may share one client, so the
cache serialises authorization behind a lock: the first caller authorizes,
the others wait and reuse its token.  A 401 invalidates only the token the
failed request used, so a burst of 401s triggers one refresh, not many.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

from softphone.log import get_logger
from softphone.platform.models import Token

log = get_logger(__name__)

#: Refresh this long before ``expiry_date`` (or a tenth of the lifetime if shorter).
DEFAULT_MARGIN = timedelta(seconds=60)


class TokenState(enum.Enum):
    EMPTY = "empty"
    VALID = "valid"
    EXPIRED = "expired"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class TokenCache:
    """Holds at most one :class:`Token`; ``get`` authorizes when it must."""

    def __init__(
        self,
        authorize: Callable[[], Awaitable[Token]],
        *,
        margin: timedelta = DEFAULT_MARGIN,
        clock: Callable[[], datetime] = utc_now,
    ):
        self._authorize = authorize
        self._margin = margin
        self._clock = clock
        self._token: Token | None = None
        self._obtained: datetime | None = None
        self._lock = asyncio.Lock()
        self.authorizations = 0

    def __repr__(self) -> str:
        return f"TokenCache(state={self.state.value}, authorizations={self.authorizations})"

    @property
    def token(self) -> Token | None:
        return self._token

    @property
    def state(self) -> TokenState:
        if self._token is None:
            return TokenState.EMPTY
        return TokenState.VALID if self._fresh(self._token) else TokenState.EXPIRED

    def _fresh(self, token: Token) -> bool:
        if token.expiry_date is None:  # no expiry given: use it until the server says 401
            return True
        now = self._clock()
        margin = self._margin
        if self._obtained is not None:
            margin = min(margin, (token.expiry_date - self._obtained) / 10)
        return now < token.expiry_date - margin

    def put(self, token: Token) -> None:
        """Store a token obtained elsewhere (an explicit ``authorize()`` call)."""
        self._token = token
        self._obtained = self._clock()

    async def get(self) -> Token:
        """A fresh token, authorizing (once, for all waiters) if needed."""
        token = self._token
        if token is not None and self._fresh(token):
            return token
        async with self._lock:
            token = self._token
            if token is not None and self._fresh(token):
                return token
            if token is not None:
                log.debug("token expires at %s: refreshing", token.expiry_date)
            return await self._refresh()

    async def refresh_after_rejection(self, rejected: Token) -> Token:
        """A new token after the server rejected ``rejected`` with a 401.

        If another coroutine already replaced it, that newer token is returned.
        """
        async with self._lock:
            if self._token is not None and self._token is not rejected and self._fresh(self._token):
                return self._token
            log.debug("token rejected by the server: re-authorizing once")
            self._token = None
            return await self._refresh()

    def invalidate(self) -> None:
        self._token = None

    async def _refresh(self) -> Token:
        token = await self._authorize()
        self.authorizations += 1
        self.put(token)
        return token
