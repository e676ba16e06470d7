"""``phpo serve`` inside the embedded stack (what ``phpo up`` runs): MLflow, server, agent and
the service; a task's registered model named to the service and served."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from agent.agent_helpers import PY, free_port, wait_until

from .payloads import TORCH
from .test_registry import X12, load

pytestmark = pytest.mark.slow


def test_stack_serves_a_registered_model(tmp_path):
    from phpo.client import Client
    from phpo.client.cli.stack import Stack

    with Stack(tmp_path / "data", slots=2, mlflow=True, serve_port=free_port()) as stack:
        assert stack.serve_url
        c = Client(stack.url, str(stack.user_token))
        (tmp_path / "sb").mkdir()
        (tmp_path / "sb" / "nn_train.py").write_text(TORCH)
        task = c.submit(
            {
                "evaluationExec": f"{PY} nn_train.py",
                "optimizer": "grid",
                "searchSpace": X12,
                "maxPoints": 2,
                "nParallelEvaluation": 2,
                "outDS": f"user.up.{uuid.uuid4().hex[:6]}",
            },
            directory=tmp_path / "sb",
        )
        models = wait_until(
            lambda: (ms := list(c.models(task.id))) and ms[0].status != "pending" and ms,
            300,
            "the task's model registered",
            lambda: (stack.log_dir / "server.log").read_text()[-3000:],
        )
        m = models[0]
        assert m.status == "registered", m
        headers = {"Authorization": f"Bearer {stack.user_token}"}
        wait_until(
            lambda: _up(stack.serve_url),
            180,
            "phpo serve to answer",
            lambda: (stack.log_dir / "serve.log").read_text()[-3000:],
        )
        r = httpx.post(
            f"{stack.serve_url}/v1/models",
            json={"name": m.name, "version": m.version},
            headers=headers,
            timeout=120,
        )
        assert r.status_code == 201, r.text
        rows = np.random.default_rng(4).random((2, 5)).astype(np.float32)
        r = httpx.post(
            f"{stack.serve_url}/v1/models/{m.name}/{m.version}/predict",
            json={"inputs": rows.tolist()},
            headers=headers,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        want = load(stack.mlflow_url, m.uri).predict(rows)
        assert np.allclose(np.asarray(r.json()["predictions"]), want, atol=1e-5)
    assert stack.serve.poll() is not None  # stopped with the stack


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
