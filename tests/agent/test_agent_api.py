"""``AgentAPI`` and the outbox against a real server process (no agent process here)."""

from __future__ import annotations

import time

import pytest
from phpo.client.agent_api import AgentAPI
from phpo.client.errors import AuthError, Conflict, NotFound, ServerUnreachable
from phpo.evaluation_container.outbox import Outbox
from phpo.schemas.artifacts import ArtifactKind
from phpo.schemas.jobs import (
    AcquireRequest,
    CompleteRequest,
    FailRequest,
    HeartbeatRequest,
    IntermediateReport,
    JobKind,
    PointResult,
)

from .agent_helpers import base_spec, free_port, get_artifacts, get_points, submit, wait_until


def counting(api: AgentAPI) -> list:
    sent: list = []
    api._http.event_hooks["request"].append(lambda req: sent.append(req.url.path))
    return sent


def acquire_job(api: AgentAPI, timeout: float = 30):
    req = AcquireRequest(agent="t", site="local", kinds=[JobKind.evaluation])
    return wait_until(lambda: api.acquire(req), timeout, "a job to acquire")


def test_job_calls_round_trip(live_server, tmp_path):
    tid = submit(live_server, base_spec("true", maxPoints=2, nParallelEvaluation=2))
    with AgentAPI(live_server.url, live_server.agent_token) as api:
        job = acquire_job(api)
        assert job.task_id == tid and job.kind == JobKind.evaluation and len(job.points) == 1
        pid = job.points[0].point_id
        hb = api.heartbeat(
            job.id, HeartbeatRequest(intermediate=[IntermediateReport(point_id=pid, step=1, value=0.5)])
        )
        assert hb.cancel is False
        # a streamed upload, and a download that checks the server's sha256
        log_file = tmp_path / "big.log"
        log_file.write_bytes(bytes(range(256)) * 12_000)  # ~3 MB: several chunks
        art = api.upload_artifact(job.id, ArtifactKind.log, log_file, "big.log", point_id=pid)
        assert art.size == log_file.stat().st_size and art.point_id == pid
        back = api.download_artifact(art.id, tmp_path / "dl" / "big.log")
        assert back.read_bytes() == log_file.read_bytes()
        assert [a["name"] for a in get_artifacts(live_server, tid, "log")] == ["big.log"]
        ack = api.report_point(job.id, PointResult(point_id=pid, loss=0.0))
        assert not ack.duplicate
        assert api.report_point(
            job.id, PointResult(point_id=pid, loss=0.0)
        ).duplicate  # a resend changes nothing
        assert api.complete(job.id, CompleteRequest()).state == "succeeded"
        assert api.complete(job.id, CompleteRequest()).duplicate
        with pytest.raises(Conflict):
            api.heartbeat(job.id, HeartbeatRequest())
        p = next(p for p in get_points(live_server, tid) if p["id"] == pid)
        assert p["state"] == "evaluated" and p["loss"] == 0.0
        assert [(v["step"], v["value"]) for v in p["intermediate"]] == [(1, 0.5)]


def test_nothing_to_do_is_none(live_server):
    with AgentAPI(live_server.url, live_server.agent_token) as api:
        assert api.acquire(AcquireRequest(agent="t", site="local")) is None


def test_client_errors_are_not_retried(live_server):
    with AgentAPI(live_server.url, "not-a-token", retry_seconds=30) as api:
        sent = counting(api)
        t0 = time.monotonic()
        with pytest.raises(AuthError):
            api.heartbeat(1, HeartbeatRequest())
        assert len(sent) == 1 and time.monotonic() - t0 < 5
    with AgentAPI(live_server.url, live_server.agent_token, retry_seconds=30) as api:
        sent = counting(api)
        with pytest.raises(NotFound):
            api.fail(424242, FailRequest(error="x"))
        assert len(sent) == 1


def test_network_errors_are_retried_then_raised():
    with AgentAPI(f"http://127.0.0.1:{free_port()}", "t", retry_seconds=1.5, max_backoff=0.3) as api:
        sent = counting(api)
        t0 = time.monotonic()
        with pytest.raises(ServerUnreachable):
            api.heartbeat(1, HeartbeatRequest())
        assert len(sent) >= 3  # tried again and again ...
        assert time.monotonic() - t0 < 15  # ... for a bounded time


def test_outbox_resends_until_acknowledged(live_server, tmp_path):
    tid = submit(live_server, base_spec("true", maxPoints=1))
    box = Outbox(tmp_path / "outbox")
    with AgentAPI(live_server.url, live_server.agent_token) as api:
        job = acquire_job(api)
        pid = job.points[0].point_id
    body = CompleteRequest(results=[PointResult(point_id=pid, loss=1.25)]).model_dump(mode="json")
    box.put("complete", job.id, body, "test")
    box.put("complete", 999_999, CompleteRequest().model_dump(mode="json"), "test")
    # the server is away: everything stays
    with AgentAPI(f"http://127.0.0.1:{free_port()}", "t", retry_seconds=0) as away:
        assert box.flush(away) == 0
    assert len(box) == 2
    with AgentAPI(live_server.url, live_server.agent_token) as api:
        assert box.flush(api) == 2
    assert len(box) == 0
    rejected = list((tmp_path / "outbox" / "rejected").glob("*.json"))
    assert len(rejected) == 1 and "job999999" in rejected[0].name  # refused for good, kept for a person
    p = get_points(live_server, tid)[0]
    assert p["state"] == "evaluated" and p["loss"] == 1.25
