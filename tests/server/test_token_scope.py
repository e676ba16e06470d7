"""Agent tokens are scoped: to the sites they were made for, to the jobs they hold, and to those
jobs' artifacts; revoking a token counts from its very next request. A real server process on
SQLite and on PostgreSQL; tokens made through the admin route and the ``phpo server`` CLI."""

from __future__ import annotations

import subprocess
import sys

import httpx

from .helpers import acquire, create_task, points, task, wait_until


def _token(c: httpx.Client, name: str, role: str = "agent", sites: list[str] | None = None) -> dict:
    body = {"name": name, "role": role, **({"sites": sites} if sites is not None else {})}
    r = c.post("/tokens", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def _client(srv, token: str) -> httpx.Client:
    return srv.client(token)


def _sandbox(c: httpx.Client, data: bytes = b"not even a tarball") -> int:
    r = c.put("/sandboxes", content=data, params={"name": "sandbox.tar.gz"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_agent_tokens_are_held_to_their_sites_jobs_and_artifacts(db_url, start_server):
    srv = start_server(db_url)
    with srv.client(srv.admin_token) as admin:
        site_a = _token(admin, "agent-a", sites=["SITE_A"])
        assert site_a["sites"] == ["SITE_A"] and site_a["id"] > 0
        rogue = _token(admin, "rogue", sites=["SITE_B"])
        twin = _token(admin, "agent-a", sites=["SITE_A"])  # the same name, another token
        bob = _token(admin, "bob", role="user")
    with (
        srv.client() as alice,
        _client(srv, site_a["token"]) as a,
        _client(srv, rogue["token"]) as r,
        _client(srv, twin["token"]) as t,
        _client(srv, bob["token"]) as b,
    ):
        assert a.get("/me").json() == {"name": "agent-a", "role": "agent", "sites": ["SITE_A"]}
        alice_box, bob_box = _sandbox(alice), _sandbox(b)
        tid = create_task(alice, site="SITE_A", maxPoints=1, sandbox=str(alice_box), optimizer="random")["id"]
        # another site's token cannot claim the site, not even through complete's `next`
        resp = r.post("/jobs/acquire", json={"agent": "rogue", "site": "SITE_A"})
        assert resp.status_code == 403, resp.text
        assert resp.json()["field"] == "site" and "SITE_B" in resp.json()["message"]
        assert "'SITE_A'" in resp.json()["message"]
        assert r.post("/jobs/acquire", json={"agent": "rogue", "site": "SITE_B"}).status_code == 204
        # and before it holds a job, an agent token reads no artifact at all
        assert a.get(f"/artifacts/{alice_box}").status_code == 404
        job = wait_until(lambda: acquire(a, agent="agent-a", site="SITE_A"), what="a job for SITE_A")
        pid = job["points"][0]["point_id"]
        # the holder reads its job's sandbox, not another user's, nor anything else
        got = a.get(f"/artifacts/{alice_box}")
        assert got.status_code == 200 and got.content == b"not even a tarball"
        resp = a.get(f"/artifacts/{bob_box}")
        assert resp.status_code == 404 and "a job this token holds" in resp.json()["message"]
        for other in (r, t):  # another site's token, and a token that only shares the holder's name
            assert other.get(f"/artifacts/{alice_box}").status_code == 404
            planted = {"point_id": pid, "status": 0, "loss": -12345.0}
            assert other.post(f"/jobs/{job['id']}/points/{pid}/result", json=planted).status_code == 404
            assert other.post(f"/jobs/{job['id']}/heartbeat", json={}).status_code == 404
            assert other.post(f"/jobs/{job['id']}/complete", json={"results": [planted]}).status_code == 404
            assert (
                other.post(f"/jobs/{job['id']}/fail", json={"error": "x", "retry": False}).status_code == 404
            )
            resp = other.put(
                f"/jobs/{job['id']}/artifacts/checkpoint",
                content=b"x",
                params={"point_id": pid, "name": "c.tgz"},
            )
            assert resp.status_code == 404, resp.text
        # complete asking for a next job of another site is refused before it ends the job
        nxt = {"results": [], "next": {"agent": "agent-a", "site": "SITE_B"}}
        resp = a.post(f"/jobs/{job['id']}/complete", json=nxt)
        assert resp.status_code == 403 and resp.json()["field"] == "site", resp.text
        # the holder's own checkpoint it may read back; once the job is over, nothing
        ck = a.put(
            f"/jobs/{job['id']}/artifacts/checkpoint", content=b"ckpt", params={"point_id": pid, "name": "c"}
        )
        assert ck.status_code == 201, ck.text
        assert a.get(f"/artifacts/{ck.json()['id']}").content == b"ckpt"
        assert t.get(f"/artifacts/{ck.json()['id']}").status_code == 404
        resp = a.post(
            f"/jobs/{job['id']}/complete", json={"results": [{"point_id": pid, "status": 0, "loss": 0.5}]}
        )
        assert resp.status_code == 200, resp.text
        assert a.get(f"/artifacts/{alice_box}").status_code == 404
        assert [p["loss"] for p in points(alice, tid)] == [0.5]  # no -12345 anywhere
        wait_until(lambda: task(alice, tid)["state"] == "finished", what="the task to finish")


def test_sites_only_for_agent_tokens(start_server, tmp_path):
    srv = start_server()
    with srv.client(srv.admin_token) as admin:
        r = admin.post("/tokens", json={"name": "u", "role": "user", "sites": ["A"]})
        assert r.status_code == 422 and r.json()["field"] == "sites", r.text
        r = admin.post("/tokens", json={"name": "a", "role": "agent", "sites": ["A,B"]})
        assert r.status_code == 422 and "sites" in r.json()["field"], r.text
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "phpo.server",
            "create-token",
            "--name",
            "u",
            "--role",
            "user",
            "--site",
            "A",
            *srv.db_args(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 2 and "only agent tokens are scoped to sites" in p.stderr and not p.stdout
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "phpo.server",
            "create-token",
            "--name",
            "ag",
            "--role",
            "agent",
            "--site",
            "SITE_A, SITE_B",
            *srv.db_args(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    with srv.client(p.stdout.strip()) as ag:
        assert ag.get("/me").json()["sites"] == ["SITE_A", "SITE_B"]
        assert ag.post("/jobs/acquire", json={"agent": "x", "site": "SITE_B"}).status_code == 204
        assert ag.post("/jobs/acquire", json={"agent": "x", "site": "SITE_C"}).status_code == 403
    p = subprocess.run(
        [sys.executable, "-m", "phpo.server", "list-tokens", *srv.db_args()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "SITE_A,SITE_B" in p.stdout and "(any)" in p.stdout  # the agent's scope; root's none
    p = subprocess.run(
        [sys.executable, "-m", "phpo.server", "revoke-token", "nobody-has-this-name", *srv.db_args()],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 1 and "no token named or numbered 'nobody-has-this-name'" in p.stderr


def test_a_revoked_token_is_refused_on_the_very_next_request(db_url, start_server):
    srv = start_server(db_url)
    with srv.client(srv.admin_token) as admin:
        made = _token(admin, "doomed")
        cli = _token(admin, "doomed-by-cli", role="user")
        with _client(srv, made["token"]) as d, _client(srv, cli["token"]) as u:
            assert d.get("/me").status_code == 200 and u.get("/me").status_code == 200
            r = admin.post(f"/tokens/{made['id']}/revoke")
            assert r.status_code == 200 and r.json()["revoked"] is True and "token" not in r.json()
            r = d.get("/me")  # at once: no cache keeps it alive
            assert r.status_code == 401 and "revoked" in r.json()["message"]
            # the CLI writes straight to the database: every server process sees it at once
            p = subprocess.run(
                [sys.executable, "-m", "phpo.server", "revoke-token", "doomed-by-cli", *srv.db_args()],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert p.returncode == 0 and f"revoked token {cli['id']} (doomed-by-cli, user)" in p.stdout, (
                p.stderr
            )
            assert u.get("/tasks").status_code == 401
        listed = {t["name"]: t for t in admin.get("/tokens").json()}
        assert (
            listed["doomed"]["revoked"]
            and listed["doomed-by-cli"]["revoked"]
            and not listed["root"]["revoked"]
        )
        assert all("token" not in t and "token_hash" not in t for t in listed.values())
        r = admin.post("/tokens/999999/revoke")
        assert r.status_code == 404 and r.json()["field"] == "token_id"
    with srv.client() as user:  # a user cannot list or revoke tokens
        assert user.get("/tokens").status_code == 403
        assert user.post(f"/tokens/{made['id']}/revoke").status_code == 403


def test_revoked_agent_tokens_lose_their_jobs_calls(start_server):
    srv = start_server()
    with srv.client(srv.admin_token) as admin, srv.client() as alice:
        by_route, by_cli = _token(admin, "agent-r"), _token(admin, "agent-c")
        create_task(alice, maxPoints=1)
        create_task(alice, maxPoints=1)
        with _client(srv, by_route["token"]) as a, _client(srv, by_cli["token"]) as b:
            job_a = wait_until(lambda: acquire(a, agent="agent-r"), what="a job")
            job_b = wait_until(lambda: acquire(b, agent="agent-c"), what="a job")
            assert admin.post(f"/tokens/{by_route['id']}/revoke").status_code == 200
            subprocess.run(
                [sys.executable, "-m", "phpo.server", "revoke-token", str(by_cli["id"]), *srv.db_args()],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            assert a.post(f"/jobs/{job_a['id']}/heartbeat", json={}).status_code == 401
            assert b.post(f"/jobs/{job_b['id']}/heartbeat", json={}).status_code == 401
