"""Gang leasing on a real server over HTTP (``--nNodesPerPoint 2``): the agents here are plain
HTTP clients, so the lease protocol is checked without torch (tests/agent/test_agent_gang.py runs
real agents and torchrun)."""

from __future__ import annotations

import time

import pytest

from .helpers import acquire, create_task, points, task, wait_until

GANG = {"launcher": "torchrun", "nNodesPerPoint": 2, "gangTimeout": 600}


def test_a_point_is_leased_to_two_agents_all_or_none_and_node_rank_0_reports(db_url, start_server):
    srv = start_server(db_url, "--lease-seconds", "30")
    with srv.client() as c:
        tid = create_task(c, maxPoints=2, nParallelEvaluation=2, **GANG)["id"]
        wait_until(lambda: task(c, tid)["counts"]["ready"] == 2, what="two ready points")
    with srv.client(srv.agent_token) as a:
        # an agent that names no rendezvous endpoint cannot host a gang: nothing for it
        assert acquire(a, "plain") is None
        lead = acquire(a, "agent-a", rendezvous_endpoint="127.0.0.1:29500")
        assert lead["gang"] == {
            "size_min": 2,
            "size_max": 2,
            "node_rank": 0,
            "leader_job_id": lead["id"],
            "endpoint": "127.0.0.1:29500",
            "formed": False,
            "members": 1,
            "message": None,
        }
        assert len(lead["points"]) == 1
        # the same agent never joins its own gang: its second slot leads the other point's
        other = acquire(a, "agent-a", rendezvous_endpoint="127.0.0.1:29501")
        assert (
            other["gang"]["node_rank"] == 0
            and other["points"][0]["point_id"] != lead["points"][0]["point_id"]
        )
        member = acquire(a, "agent-b", rendezvous_endpoint="127.0.0.1:29502")
        assert member["gang"]["leader_job_id"] == lead["id"] and member["gang"]["node_rank"] == 1
        assert member["gang"]["formed"] and member["gang"]["endpoint"] == "127.0.0.1:29500"  # the leader's
        assert member["points"] == lead["points"]  # the same point, params and checkpoint
        r = a.post(f"/jobs/{lead['id']}/heartbeat", json={})
        assert r.status_code == 200 and r.json()["gang"]["formed"] and r.json()["gang"]["members"] == 2
        # a full gang takes no one else: agent-c joins the other point's forming gang
        third = acquire(a, "agent-c", rendezvous_endpoint="127.0.0.1:29503")
        assert third["gang"]["leader_job_id"] == other["id"] and third["gang"]["node_rank"] == 1
        assert acquire(a, "agent-d", rendezvous_endpoint="127.0.0.1:29504") is None  # both full, none ready
        with srv.client() as c:
            assert task(c, tid)["counts"]["leased"] == 2 and task(c, tid)["counts"]["ready"] == 0
        # the member closes its job with no result; the point stays the leader's
        pid = lead["points"][0]["point_id"]
        r = a.post(f"/jobs/{member['id']}/complete", json={})
        assert r.status_code == 200 and r.json()["state"] == "succeeded", r.text
        with srv.client() as c:
            assert {p["id"]: p["state"] for p in points(c, tid)}[pid] == "leased"
        r = a.post(f"/jobs/{lead['id']}/complete", json={"results": [{"point_id": pid, "loss": 0.25}]})
        assert r.status_code == 200, r.text
        with srv.client() as c:
            p = {p["id"]: p for p in points(c, tid)}[pid]
            assert p["state"] == "evaluated" and p["loss"] == 0.25 and p["attempts"] == 1


def test_a_lost_member_fails_the_attempt_and_the_leader_is_stopped(db_url, start_server):
    srv = start_server(db_url, "--lease-seconds", "2", "--reaper-interval", "0.2")
    with srv.client() as c:
        tid = create_task(c, maxPoints=1, maxAttempts=3, **GANG)["id"]
        wait_until(lambda: task(c, tid)["counts"]["ready"] == 1, what="a ready point")
    with srv.client(srv.agent_token) as a:
        lead = acquire(a, "agent-a", rendezvous_endpoint="127.0.0.1:29500")
        member = acquire(a, "agent-b", rendezvous_endpoint="127.0.0.1:29501")
        assert member["gang"]["formed"]

        def leader_beats() -> int:  # the leader keeps beating; the member is silent (its agent died)
            time.sleep(0.3)
            return a.post(f"/jobs/{lead['id']}/heartbeat", json={}).status_code

        wait_until(lambda: leader_beats() == 409, timeout=30, what="the leader's lease to be taken")
        with srv.client() as c:
            (p,) = points(c, tid)
            assert p["state"] == "ready" and p["attempts"] == 1, p  # one attempt spent, to be retried
            assert "node 1 of the point's gang" in p["error"] and "lease lost" in p["error"], p
        # a new gang forms for the retry
        again = acquire(a, "agent-a", rendezvous_endpoint="127.0.0.1:29502")
        assert again["gang"]["node_rank"] == 0 and again["points"][0]["attempt"] == 2


def test_an_elastic_gang_starts_with_min_takes_a_joiner_and_survives_losing_it(db_url, start_server):
    """``nNodesPerPoint 1:2``: the leader alone is a formed gang; a second agent joins while it
    runs; that member's lost lease costs the point nothing (MIN is still there): the leader's
    lease holds, no attempt is spent, and a new agent may join again."""
    srv = start_server(db_url, "--lease-seconds", "2", "--reaper-interval", "0.2")
    with srv.client() as c:
        tid = create_task(c, maxPoints=1, maxAttempts=3, **{**GANG, "nNodesPerPoint": "1:2"})["id"]
        wait_until(lambda: task(c, tid)["counts"]["ready"] == 1, what="a ready point")
    with srv.client(srv.agent_token) as a:
        lead = acquire(a, "agent-a", rendezvous_endpoint="127.0.0.1:29500")
        assert lead["gang"]["formed"] and lead["gang"]["size_min"] == 1 and lead["gang"]["size_max"] == 2
        member = acquire(a, "agent-b", rendezvous_endpoint="127.0.0.1:29501")
        assert member["gang"]["leader_job_id"] == lead["id"] and member["gang"]["members"] == 2
        assert acquire(a, "agent-c", rendezvous_endpoint="127.0.0.1:29502") is None  # MAX reached

        def members() -> int:  # the leader keeps beating; the member is silent (its agent died)
            time.sleep(0.3)
            r = a.post(f"/jobs/{lead['id']}/heartbeat", json={})
            assert r.status_code == 200, r.text  # never taken from the leader
            return r.json()["gang"]["members"]

        wait_until(lambda: members() == 1, timeout=30, what="the lost member to leave the gang")
        with srv.client() as c:
            (p,) = points(c, tid)
            assert p["state"] == "leased" and p["attempts"] == 1 and not p.get("error"), (
                p
            )  # trains on, first attempt
        again = acquire(a, "agent-c", rendezvous_endpoint="127.0.0.1:29503")  # below MAX: open again
        assert again["gang"]["leader_job_id"] == lead["id"] and again["gang"]["members"] == 2
        pid = lead["points"][0]["point_id"]
        r = a.post(f"/jobs/{lead['id']}/complete", json={"results": [{"point_id": pid, "loss": 0.5}]})
        assert r.status_code == 200, r.text
        with srv.client() as c:
            (p,) = points(c, tid)
            assert p["state"] == "evaluated" and p["attempts"] == 1 and p["loss"] == 0.5, p
