"""Bearer tokens, checked against the phpo server: the service keeps no token store of its own.

Each token the service has not seen within ``auth_cache_s`` seconds is sent to the phpo
server's ``GET /api/v1/me``, which answers its name and role (user, agent, admin) or 401; the
answer is kept for ``auth_cache_s`` seconds (default 5), so a revoked token is refused by the
service at most that long after the phpo server refuses it. Concurrent requests with one token
share one look-up. Keys are SHA-256 hashes of the
tokens, never the tokens. Roles: ``user`` sees and uses the models it owns (its tasks' models,
the models it uploaded), ``admin`` every model, ``agent`` none (agent tokens are for agents).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Caller:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_use(self, owner: str | None) -> bool:
        return self.is_admin or (owner is not None and owner == self.name)


class AuthError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class TokenChecker:
    def __init__(self, phpo_url: str, cache_s: float):
        self.url = phpo_url.rstrip("/") + "/api/v1/me"
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._inflight: dict[str, asyncio.Task] = {}  # one look-up per token at a time
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def caller(self, header: str | None) -> Caller:
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(
                401,
                "this call needs 'Authorization: Bearer <token>' (a phpo token: "
                "phpo server create-token makes one)",
            )
        key = hashlib.sha256(token.strip().encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is None or hit[0] < now:
            # concurrent requests with one token share one look-up (else, each time the cache
            # runs out under load, every waiting request would ask the phpo server at once)
            task = self._inflight.get(key)
            if task is None:
                task = self._inflight[key] = asyncio.create_task(self._ask(token.strip()))
                task.add_done_callback(lambda _t, k=key: self._inflight.pop(k, None))
            caller = await asyncio.shield(task)
            hit = (time.monotonic() + self.cache_s, caller)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = hit
        if hit[1] is None:
            raise AuthError(401, "the bearer token is not valid (unknown or revoked at the phpo server)")
        caller = hit[1]
        if caller.role not in ("user", "admin"):
            raise AuthError(
                403, f"the serving API is for user or admin tokens; '{caller.name}' has role '{caller.role}'"
            )
        return caller

    async def _ask(self, token: str) -> Caller | None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=10)
        try:
            r = await self._http.get(self.url, headers={"Authorization": f"Bearer {token}"})
        except httpx.TransportError as e:
            raise AuthError(
                503, f"cannot check the token: the phpo server at {self.url} is unreachable ({e})"
            ) from e
        if r.status_code == 401:
            return None
        if r.status_code != 200:
            raise AuthError(503, f"cannot check the token: the phpo server answered {r.status_code}")
        body = r.json()
        return Caller(name=str(body["name"]), role=str(body["role"]))
