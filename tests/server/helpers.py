"""Helpers for the server tests: task specs, polling, and a tiny agent that talks plain HTTP
(the real agent lives in phpo.evaluation_container; these tests exercise the server alone)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx


def spec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "evaluationExec": "python train.py",
        "searchSpace": {"x": {"method": "uniform", "dimension": {"low": 0.0, "high": 1.0}}},
        "optimizer": "random",
        "maxPoints": 10,
    }
    base.update(over)
    return base


def wait_until(cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or cond}; last value {last!r}")


def task(c: httpx.Client, tid: int) -> dict[str, Any]:
    r = c.get(f"/tasks/{tid}")
    assert r.status_code == 200, r.text
    return r.json()


def points(c: httpx.Client, tid: int, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    offset = 0
    while True:
        r = c.get(f"/tasks/{tid}/points", params={"limit": 1000, "offset": offset, **params})
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["items"]
        offset += len(page["items"])
        if offset >= page["total"] or not page["items"]:
            return out


def create_task(c: httpx.Client, **over: Any) -> dict[str, Any]:
    r = c.post("/tasks", json=spec(**over))
    assert r.status_code == 201, r.text
    return r.json()


def acquire(
    c: httpx.Client, agent: str = "agent-a", site: str = "local", **extra: Any
) -> dict[str, Any] | None:
    r = c.post("/jobs/acquire", json={"agent": agent, "site": site, **extra})
    if r.status_code == 204:
        return None
    assert r.status_code == 200, r.text
    return r.json()


class TinyAgent(threading.Thread):
    """Acquires jobs and reports ``loss_fn(params)`` for each point until stopped; survives a
    server that is down for a while (it retries), like a real agent would."""

    def __init__(
        self,
        url: str,
        token: str,
        loss_fn: Callable[[dict], float] = lambda p: p.get("x", 0.0),
        name: str = "tiny-agent",
        site: str = "local",
        delay: float = 0.0,
        status: int = 0,
    ):
        super().__init__(daemon=True, name=name)
        self.c = httpx.Client(
            base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        self.loss_fn, self.agent, self.site, self.delay = loss_fn, name, site, delay
        self.status = status  # non-zero: every attempt fails, as a broken payload's would
        self.stop = threading.Event()
        self.evaluated: list[int] = []  # point ids whose result was accepted (not duplicate)
        self.jobs = 0
        self.errors: list[str] = []

    def _post(self, path: str, body: dict) -> httpx.Response | None:
        for _ in range(200):
            if self.stop.is_set():
                return None
            try:
                return self.c.post(path, json=body)
            except httpx.TransportError:
                time.sleep(0.1)
        return None

    def run(self) -> None:
        while not self.stop.is_set():
            r = self._post("/jobs/acquire", {"agent": self.agent, "site": self.site})
            if r is None:
                return
            if r.status_code != 200:
                if r.status_code != 204:
                    self.errors.append(r.text)
                time.sleep(0.05)
                continue
            job = r.json()
            self.jobs += 1
            if self.delay:
                time.sleep(self.delay)
            for p in job["points"]:
                rr = self._post(
                    f"/jobs/{job['id']}/points/{p['point_id']}/result",
                    {
                        "point_id": p["point_id"],
                        "status": self.status,
                        "loss": None if self.status else self.loss_fn(p["params"]),
                        "message": f"payload failed (status {self.status})" if self.status else None,
                    },
                )
                if rr is not None and rr.status_code == 200 and not rr.json()["duplicate"]:
                    self.evaluated.append(p["point_id"])
            self._post(f"/jobs/{job['id']}/complete", {})

    def halt(self) -> None:
        self.stop.set()
        self.join(timeout=30)
        self.c.close()
