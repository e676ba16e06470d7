"""helm lint and helm template of helm/phpo for the default and the production values; every
manifest validated against the Kubernetes API schemas of a current release (kubernetes-validate,
strict: an unknown field fails); values.schema.json refuses bad values; and what the manifests
must say: probes on the health route, hook annotations of the migration Job, GPU requests, no
token or password in a values file or ConfigMap."""

from __future__ import annotations

import base64
import shutil

import kubernetes_validate
import pytest
import yaml

from .conftest import CHART, PRODUCTION, by_kind, render, run_helm

# the newest Kubernetes release whose API schemas kubernetes-validate bundles, and 1.29 (the
# kubectl that comes with helm here); the chart says kubeVersion >= 1.25
K8S_VERSION = kubernetes_validate.utils.latest_version()
K8S_VERSIONS = [K8S_VERSION, "1.29.0"]
HEALTH = "/api/v1/health"

VALUE_SETS = {
    "default": [],
    "production": ["-f", str(PRODUCTION)],
    "external-db-no-mlflow": [
        "--set",
        "database.external.enabled=true,database.external.existingSecret=db",
        "--set",
        "mlflow.enabled=false,agents.gpus=0,ingress.enabled=true",
    ],
}


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def manifests(request, helm):
    return request.param, render(helm, *VALUE_SETS[request.param])


def test_helm_lint_default_and_production(helm):
    for args in ([], ["-f", str(PRODUCTION)]):
        p = run_helm(helm, "lint", "--strict", str(CHART), *args)
        assert "0 chart(s) failed" in p.stdout, p.stdout


def test_every_manifest_is_valid_for_a_current_kubernetes(manifests):
    name, docs = manifests
    assert tuple(map(int, K8S_VERSION.split(".")[:2])) >= (1, 33), K8S_VERSION
    kinds = set()
    for d in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(d, version, strict=True)
        kinds.add(d["kind"])
    assert {"Deployment", "Service", "ConfigMap", "Job"} <= kinds, (name, kinds)


def test_default_release_has_every_part(helm):
    docs = render(helm)
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {"phpo-server", "phpo-mlflow", "phpo-agent"}
    assert deployments["phpo-server"]["spec"]["replicas"] == 2
    assert set(by_kind(docs, "StatefulSet")) == {"phpo-postgresql"}
    sts = by_kind(docs, "StatefulSet")["phpo-postgresql"]
    assert sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert set(by_kind(docs, "Service")) == {"phpo", "phpo-mlflow", "phpo-postgresql"}
    assert set(by_kind(docs, "PersistentVolumeClaim")) == {"phpo-artifacts", "phpo-mlflow"}
    assert set(by_kind(docs, "PodDisruptionBudget")) == {"phpo-server"}
    assert not by_kind(docs, "Ingress")  # optional, off by default
    mlflow = deployments["phpo-mlflow"]["spec"]["template"]["spec"]
    assert mlflow["volumes"][0]["persistentVolumeClaim"]["claimName"] == "phpo-mlflow"
    server = deployments["phpo-server"]["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    assert mounts["/data/artifacts"] == "artifacts"
    assert by_kind(docs, "PersistentVolumeClaim")["phpo-artifacts"]["spec"]["accessModes"] == [
        "ReadWriteMany"
    ]


def test_server_probes_use_the_health_route_and_resources_are_set(manifests):
    _, docs = manifests
    server = next(d for n, d in by_kind(docs, "Deployment").items() if n.endswith("-server"))
    spec = server["spec"]["template"]["spec"]
    c = spec["containers"][0]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": HEALTH, "port": "http"}, probe
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert spec["enableServiceLinks"] is False  # else a Service named phpo sets PHPO_PORT=tcp://...
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert server["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    svc = next(d for n, d in by_kind(docs, "Service").items() if not n.endswith(("-mlflow", "-postgresql")))
    assert svc["spec"]["selector"] == server["spec"]["selector"]["matchLabels"]


def test_migration_job_is_a_pre_upgrade_hook_running_phpo_server_migrate(manifests):
    name, docs = manifests
    job = next(iter(by_kind(docs, "Job").values()))
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert "pre-upgrade" in hooks
    # an external database exists before install; a bundled one only after it
    assert ("pre-install" in hooks) == (name != "default")
    assert ("post-install" in hooks) == (name == "default")
    script = " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])
    assert script.startswith("phpo server migrate")
    # the Secrets that hook needs are hooks of an earlier weight
    for secret in by_kind(docs, "Secret").values():
        assert int(secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            job["metadata"]["annotations"]["helm.sh/hook-weight"]
        )


def test_agents_request_gpus_with_node_selector_and_tolerations(helm):
    docs = render(helm, "-f", str(PRODUCTION))
    agent = by_kind(docs, "Deployment")["phpo-agent"]
    spec = agent["spec"]["template"]["spec"]
    res = spec["containers"][0]["resources"]
    assert res["requests"]["nvidia.com/gpu"] == 1 and res["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert agent["spec"]["replicas"] == 8
    args = spec["containers"][0]["args"]
    assert args[:3] == ["agent", "--site", "k8s-gpu"] and "--gpus" in args
    cpu = by_kind(render(helm, "--set", "agents.gpus=0"), "Deployment")["phpo-agent"]
    res = cpu["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in res["requests"] and "nvidia.com/gpu" not in res.get("limits", {})


def test_tokens_live_in_secrets_never_in_values_or_configmaps(helm, manifests):
    _, docs = manifests
    for f in (CHART / "values.yaml", PRODUCTION):
        for path, v in _strings(yaml.safe_load(f.read_text())):
            assert not v.startswith("phpo_"), f"a token in {f.name}: {path}"
            assert not ("://" in v and "@" in v), f"a URL with credentials in {f.name}: {path}"
    for cm in by_kind(docs, "ConfigMap").values():
        for k, v in cm["data"].items():
            assert "TOKEN" not in k and "PASSWORD" not in k and not v.startswith("phpo_"), (k, v)
            assert "@" not in v, f"a credential in ConfigMap {cm['metadata']['name']}: {k}"
    # every container takes the database URL and the agent token from Secrets
    for d in by_kind(docs, "Deployment").values():
        for c in d["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                if e["name"] in ("PHPO_TOKEN", "PHPO_DATABASE_URL", "POSTGRES_PASSWORD"):
                    assert "secretKeyRef" in e["valueFrom"] and "value" not in e, (c["name"], e)


def _strings(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def test_generated_agent_token_is_a_valid_phpo_token(helm):
    docs = render(helm)
    secret = by_kind(docs, "Secret")["phpo-agent-token"]
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert token.startswith("phpo_") and len(token) == 48
    # and the migration Job registers exactly that Secret's token, as an agent token for the site
    job = by_kind(docs, "Job")["phpo-migrate"]["spec"]["template"]["spec"]
    assert job["volumes"] == [{"name": "agent-token", "secret": {"secretName": "phpo-agent-token"}}]
    assert (
        "--role agent --site k8s --token-file /run/phpo/agent-token/token" in job["containers"][0]["args"][0]
    )
    db = by_kind(docs, "Secret")["phpo-db"]
    url = base64.b64decode(db["data"]["url"]).decode()
    assert url.startswith("postgresql://phpo:") and url.endswith("@phpo-postgresql:5432/phpo")
    # an existing agent token Secret: nothing generated, nothing registered
    docs = render(helm, "--set", "agents.tokenSecret.existingSecret=my-agent-token")
    assert "phpo-agent-token" not in by_kind(docs, "Secret")
    job = by_kind(docs, "Job")["phpo-migrate"]["spec"]["template"]["spec"]
    assert "create-token" not in job["containers"][0]["args"][0] and "volumes" not in job
    agent = by_kind(docs, "Deployment")["phpo-agent"]["spec"]["template"]["spec"]["containers"][0]
    token_env = next(e for e in agent["env"] if e["name"] == "PHPO_TOKEN")
    assert token_env["valueFrom"]["secretKeyRef"]["name"] == "my-agent-token"


def test_a_release_of_agents_only_for_another_site(helm, tmp_path):
    args = [
        "--set",
        "server.enabled=false,agents.serverUrl=https://phpo.example.org,agents.site=site-b",
        "--set",
        "agents.tokenSecret.existingSecret=site-b-token",
    ]
    docs = render(helm, *args)
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [("Deployment", "phpo-agent")]
    env = {e["name"]: e for e in docs[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PHPO_URL"]["value"] == "https://phpo.example.org"
    assert env["PHPO_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "site-b-token"
    kubernetes_validate.validate(docs[0], K8S_VERSION, strict=True)
    assert "Agents only" in _notes(helm, tmp_path, *args)
    p = run_helm(helm, "template", "phpo", str(CHART), "--set", "server.enabled=false", check=False)
    assert p.returncode != 0 and "agents.serverUrl must name the phpo server" in p.stderr


@pytest.mark.parametrize(
    "bad, field",
    [
        (["--set", "server.replicas=0"], "replicas"),
        (["--set", "server.maxAcquireWait=60"], "maxAcquireWait"),
        (["--set", "agents.gpus=-1"], "gpus"),
        (["--set", "server.logLevel=loud"], "logLevel"),
        (["--set", "service.port=70000"], "port"),
        (
            ["--set", "database.external.enabled=true"],
            "existingSecret",
        ),  # an external database names its Secret
        (["--set", "agents.token=phpo_abc"], "token"),  # no token in values
        (["--set", "server.extraEnv[0].name=PHPO_TOKEN,server.extraEnv[0].value=x"], "extraEnv"),
        (["--set", "artifacts.persistence.size=lots"], "size"),
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
    ],
)
def test_values_schema_refuses_bad_values(helm, bad, field):
    p = run_helm(helm, "template", "phpo", str(CHART), *bad, check=False)
    assert p.returncode != 0, f"{bad} was accepted"
    assert "values don't meet the specifications of the schema" in p.stderr, p.stderr
    assert field in p.stderr, p.stderr


def _notes(helm: str, tmp_path, *args: str) -> str:
    """NOTES.txt as helm renders it (``helm install --dry-run`` needs a cluster: a copy of the chart
    renders the same template into a ConfigMap with ``tpl``)."""
    chart = tmp_path / "phpo"
    shutil.copytree(CHART, chart)
    (chart / "notes.tpl").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n"
        '  notes: {{ tpl (.Files.Get "notes.tpl") . | quote }}\n'
    )
    out = run_helm(
        helm,
        "template",
        "phpo",
        str(chart),
        "--namespace",
        "hep",
        "--show-only",
        "templates/zz-notes.yaml",
        *args,
    ).stdout
    return yaml.safe_load(out)["data"]["notes"]


def test_notes_tell_how_to_get_a_token_and_submit(helm, tmp_path):
    notes = _notes(helm, tmp_path)
    assert "phpo server create-token --name $USER --role user" in notes
    assert "kubectl -n hep exec deploy/phpo-server" in notes
    assert "phpo submit --site k8s" in notes and "port-forward svc/phpo 8080:8080" in notes
    assert "bundled PostgreSQL" in notes
    notes = _notes(helm, tmp_path / "prod", "-f", str(PRODUCTION))
    assert "export PHPO_URL=https://phpo.example.org" in notes and "external (URL in Secret phpo-db)" in notes
