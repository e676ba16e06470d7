"""The Helm chart deployed for real (``make test-k8s``; not part of ``make test``).

The image of ``make image`` (localhost/phpo:0.1.0), the chart rendered by ``helm template``, and
the rendered Deployments, Services, ConfigMaps, Secrets and PersistentVolumeClaims run by
``podman kube play`` as pods. What a cluster would add and this machine cannot have is replaced,
and said so here:

- networking: podman's pod networks use private address ranges that are not allowed here, so the
  pods run with the host's network (values server.hostNetwork / agents.hostNetwork), one server
  replica (replicas on one host network would share a port), the Service's port equal to the
  container port, and the agents given the Service's address as 127.0.0.1:PORT (agents.serverUrl);
  podman refuses port mappings on the host network, so the containers' ``ports`` are dropped from
  what it plays (the probes name the port by number instead of by its name ``http``);
- the database: the external-database mode, on this machine's PostgreSQL (a URL in a Secret);
- the migration hook Job: podman kube play does not run Jobs, so its container runs with
  ``podman run`` (same image, command, Secret and environment), before the pods, as the
  pre-install hook would;
- no GPU: agents.gpus=0;
- Secrets: podman 4.3's kube play stores a ``kind: Secret`` document as YAML but reads a secret
  back for ``secretKeyRef`` as the JSON of its ``data`` map, so each rendered Secret's ``data``
  is created with ``podman secret create`` (what podman reads), and the rest goes to kube play.

A user token is made as NOTES.txt says (``exec`` in the server pod), a task with a sandbox is
submitted through the Service's port, and an agent pod finishes it. Everything is torn down
with ``podman kube down`` after.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time

import httpx
import pytest
import yaml

from helm.conftest import by_kind, render

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("PHPO_TEST_K8S") != "1",
        reason="the podman kube play deployment runs with make test-k8s (PHPO_TEST_K8S=1)",
    ),
]

IMAGE = os.environ.get("PHPO_IMAGE", "localhost/phpo:0.1.0")
CONTAINERS_CONF = os.path.join(os.path.dirname(__file__), "..", "..", "helm", "image", "containers.conf")
PLAYED = ("Deployment", "Service", "ConfigMap", "Secret", "PersistentVolumeClaim")
TRAIN = """\
import socket
from phpo.evaluation_container import sdk
p = sdk.load_point()
sdk.report(float((p["x"] - 2) ** 2), metrics={"pod": socket.gethostname()})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def podman(
    *args: str, check: bool = True, timeout: float = 300, input: str | None = None
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", os.path.abspath(CONTAINERS_CONF)),
    }
    p = subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, env=env, input=input
    )
    if check and p.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture
def image():
    if not shutil.which("podman"):
        pytest.skip("podman is not installed (make image installs it)")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        pytest.skip(f"no image {IMAGE}: make image builds it")
    return IMAGE


def _container(suffix: str) -> str:
    names = podman("ps", "--format", "{{.Names}}").stdout.split()
    found = [n for n in names if n.endswith(suffix)]
    assert found, f"no running container ending in {suffix!r}: {names}"
    return found[0]


def _sandbox() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = TRAIN.encode()
        info = tarfile.TarInfo("train.py")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_the_chart_runs_under_podman_kube_play_and_an_agent_pod_finishes_a_task(image, helm, pg_db, tmp_path):
    t0 = time.monotonic()
    port = free_port()
    release = f"k{port}"
    db_url = pg_db.replace("postgresql+psycopg://", "postgresql://")
    values = {
        "image": {
            "repository": image.rsplit(":", 1)[0],
            "tag": image.rsplit(":", 1)[1],
            "pullPolicy": "Never",
        },
        "server": {
            "replicas": 1,
            "hostNetwork": True,
            "port": port,
            "leaseSeconds": 30,
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
        },
        "service": {"port": port},
        "database": {"external": {"enabled": True, "existingSecret": f"{release}-db"}},
        "mlflow": {"enabled": False},
        "agents": {
            "replicas": 1,
            "gpus": 0,
            "site": "k8s",
            "hostNetwork": True,
            "serverUrl": f"http://127.0.0.1:{port}",
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "2Gi"}},
        },
        "artifacts": {"persistence": {"enabled": True, "accessModes": ["ReadWriteOnce"], "size": "1Gi"}},
    }
    vfile = tmp_path / "values.yaml"
    vfile.write_text(yaml.safe_dump(values))
    docs = render(helm, "-f", str(vfile), release=release)
    db_secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{release}-db"},
        "type": "Opaque",
        "data": {"url": base64.b64encode(db_url.encode()).decode()},
    }
    played = [db_secret] + [d for d in docs if d["kind"] in PLAYED]
    for d in played:
        if d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                named = {p["name"]: p["containerPort"] for p in c.pop("ports", [])}
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if probe in c and c[probe].get("httpGet", {}).get("port") in named:
                        c[probe]["httpGet"]["port"] = named[c[probe]["httpGet"]["port"]]
    assert {d["kind"] for d in played} == set(PLAYED)
    kube = tmp_path / "kube.yaml"
    kube.write_text(yaml.safe_dump_all([d for d in played if d["kind"] != "Secret"]))
    secrets = {d["metadata"]["name"]: d for d in played if d["kind"] == "Secret"}
    agent_token = base64.b64decode(secrets[f"{release}-phpo-agent-token"]["data"]["token"]).decode()

    # the migration hook Job's container, as the pre-install hook runs it
    job = by_kind(docs, "Job")[f"{release}-phpo-migrate"]
    c = job["spec"]["template"]["spec"]["containers"][0]
    token_dir = tmp_path / "agent-token"
    token_dir.mkdir()
    (token_dir / "token").write_text(agent_token)
    os.chmod(token_dir, 0o755)
    os.chmod(token_dir / "token", 0o644)
    env = [x for e in c["env"] if "value" in e for x in ("-e", f"{e['name']}={e['value']}")]
    mig = podman(
        "run",
        "--rm",
        "--network",
        "host",
        "--user",
        "10001",
        *env,
        "-e",
        f"PHPO_DATABASE_URL={db_url}",
        "-v",
        f"{token_dir}:/run/phpo/agent-token:ro",
        "--entrypoint",
        json.dumps(c["command"]),
        image,
        *c["args"],
    )
    assert "at revision" in mig.stdout, mig.stdout + mig.stderr
    t_migrated = time.monotonic()

    logs = ""
    try:
        for name, secret in secrets.items():
            podman("secret", "create", name, "-", input=json.dumps(secret["data"]))
        podman("kube", "play", "--network", "host", str(kube), timeout=600)
        url = f"http://127.0.0.1:{port}/api/v1"  # the Service's port
        deadline = time.time() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "the server pod did not become healthy"
            time.sleep(0.5)
        t_up = time.monotonic()
        server = _container("-server")
        # NOTES.txt: kubectl exec deploy/...-server -- phpo server create-token --name $USER --role user
        user_token = podman(
            "exec", server, "phpo", "server", "create-token", "--name", "alice", "--role", "user"
        ).stdout.strip()
        assert user_token.startswith("phpo_")
        h = {"Authorization": f"Bearer {user_token}"}
        with httpx.Client(base_url=url, headers=h, timeout=30) as cl:
            r = cl.put("/sandboxes", content=_sandbox(), params={"name": "sandbox.tar.gz"})
            assert r.status_code == 201, r.text
            spec = {
                "evaluationExec": "python train.py",
                "sandbox": str(r.json()["id"]),
                "site": "k8s",
                "optimizer": "grid",
                "searchSpace": {"params": {"x": {"type": "int", "low": 0, "high": 3}}},
                "maxPoints": 4,
                "nParallelEvaluation": 1,
            }
            r = cl.post("/tasks", json=spec)
            assert r.status_code == 201, r.text
            tid = r.json()["id"]
            deadline = time.time() + 240
            while (task := cl.get(f"/tasks/{tid}").json())["state"] not in (
                "finished",
                "failed",
                "cancelled",
            ):
                assert time.time() < deadline, f"task not done: {task}"
                time.sleep(0.5)
            assert task["state"] == "finished", task
            pts = cl.get(f"/tasks/{tid}/points", params={"limit": 100}).json()["items"]
        assert sorted(p["params"]["x"] for p in pts) == [0, 1, 2, 3]
        assert all(p["state"] == "evaluated" and p["loss"] == float((p["params"]["x"] - 2) ** 2) for p in pts)
        assert {p["site"] for p in pts} == {"k8s"}
        agent = _container("-agent")
        pods = {p["metrics"]["pod"] for p in pts}
        assert len(pods) == 1  # the agent pod ran them (host network: its hostname is the host's)
        # the agent authenticated with the token the chart generated and the hook registered
        listed = podman("exec", server, "phpo", "server", "list-tokens").stdout
        assert f"{release}-phpo-agents" in listed and "agent" in listed
        logs = podman("logs", agent, check=False).stdout + podman("logs", agent, check=False).stderr
        t_done = time.monotonic()
        print(
            f"\nkube play: migrate {t_migrated - t0:.1f} s, pods healthy {t_up - t_migrated:.1f} s, "
            f"task of 4 points finished by the agent pod {t_done - t_up:.1f} s; total {t_done - t0:.1f} s"
        )
    finally:
        if not logs:
            for suffix in ("-server", "-agent"):
                try:
                    name = _container(suffix)
                    p = podman("logs", "--tail", "40", name, check=False)
                    print(f"--- {name}\n{p.stdout}{p.stderr}")
                except AssertionError:
                    pass
        podman("kube", "down", str(kube), check=False)
        for pod in podman("pod", "ls", "--format", "{{.Name}}", check=False).stdout.split():
            if pod.startswith(f"{release}-"):  # a pod kube play left half made
                podman("pod", "rm", "-f", pod, check=False)
        for d in played:
            if d["kind"] == "PersistentVolumeClaim":
                podman("volume", "rm", "-f", d["metadata"]["name"], check=False)
            if d["kind"] == "Secret":
                podman("secret", "rm", d["metadata"]["name"], check=False)
