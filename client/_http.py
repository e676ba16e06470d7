"""The HTTP layer shared by :class:`phpo.client.Client` and the evaluation agent."""

from __future__ import annotations

from typing import Any

import httpx

from phpo.schemas.api import API_PREFIX

from .config import load_config
from .errors import ConfigError, ServerUnreachable, error_for


class HttpBase:
    """Holds one ``httpx.Client``; maps error answers to :mod:`phpo.client.errors`.

    ``transport`` lets tests and in-process use swap the network for an ASGI app.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        cfg = load_config(url, token)
        if not cfg.url:
            raise ConfigError(
                "no phpo server configured: pass url=..., set PHPO_URL, or run `phpo up` "
                "(it writes ~/.config/phpo/config.toml)"
            )
        self.url = cfg.url.rstrip("/")
        self.token = cfg.token
        headers = {"User-Agent": "phpo-client"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self._http = httpx.Client(
            base_url=self.url + API_PREFIX, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ServerUnreachable(f"cannot reach the phpo server at {self.url}: {e}") from e
        if r.status_code >= 400:
            raise_for_answer(r)
        return r

    def stream(self, method: str, path: str, **kw: Any):
        """Context manager yielding a streamed response (downloads)."""
        return self._http.stream(method, path, **kw)


def raise_for_answer(r: httpx.Response) -> None:
    try:
        body = r.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = body.get("code") or f"http_{r.status_code}"
    message = body.get("message") or body.get("detail") or r.text[:500] or r.reason_phrase
    raise error_for(r.status_code)(
        r.status_code, str(code), str(message), body.get("field"), body.get("details")
    )
