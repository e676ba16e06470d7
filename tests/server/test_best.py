"""Best point per segment: direction-aware, and the Pareto front for several objectives."""

from __future__ import annotations

from phpo.server.repositories.points import pareto_front

from .helpers import acquire, create_task, task, wait_until


def test_pareto_front_respects_directions():
    items = [("a", [1.0, 5.0]), ("b", [2.0, 2.0]), ("c", [3.0, 3.0]), ("d", [5.0, 1.0]), ("e", [1.0, 6.0])]
    assert pareto_front(items, ["minimize", "minimize"]) == ["a", "b", "d"]
    # maximizing the second objective: high second values win
    assert pareto_front(items, ["minimize", "maximize"]) == ["e"]


def _evaluate_all(srv, tid, losses):
    with srv.client(srv.agent_token) as a:
        for loss in losses:
            j = acquire(a)
            pid = j["points"][0]["point_id"]
            r = a.post(f"/jobs/{j['id']}/points/{pid}/result", json={"point_id": pid, "loss": loss})
            assert r.status_code == 200, r.text
            a.post(f"/jobs/{j['id']}/complete", json={})


def test_best_maximize_and_multi_objective(start_server):
    srv = start_server()
    with srv.client() as c:
        t_max = create_task(c, maxPoints=3, nParallelEvaluation=3, directions=["maximize"])["id"]
        wait_until(lambda: task(c, t_max)["counts"]["ready"] == 3, what="3 ready")
        _evaluate_all(srv, t_max, [0.2, 0.9, 0.5])
        best = c.get(f"/tasks/{t_max}/best").json()[0]
        assert best["loss"] == 0.9
        assert task(c, t_max)["best_loss"] == 0.9

        t_mo = create_task(c, maxPoints=3, nParallelEvaluation=3, directions=["minimize", "minimize"])["id"]
        wait_until(lambda: task(c, t_mo)["counts"]["ready"] == 3, what="3 ready")
        _evaluate_all(srv, t_mo, [[1.0, 3.0], [3.0, 1.0], [3.0, 3.0]])
        best = c.get(f"/tasks/{t_mo}/best").json()[0]
        assert sorted(tuple(p["loss"]) for p in best["pareto"]) == [(1.0, 3.0), (3.0, 1.0)]
        # a scalar loss for a two-objective task is a failed attempt with a clear error, not a result
        t2 = create_task(c, maxPoints=1, maxAttempts=1, directions=["minimize", "maximize"])["id"]
        wait_until(lambda: task(c, t2)["counts"]["ready"] == 1, what="ready")
        _evaluate_all(srv, t2, [0.5])
        pts = c.get(f"/tasks/{t2}/points").json()["items"]
        assert pts[0]["state"] == "failed" and "2 objectives" in pts[0]["error"]
