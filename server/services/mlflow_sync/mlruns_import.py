"""Importing an ``mlruns/`` tarball (the MLflow file-store layout upstream payloads write, and
what the agent ships of a payload's ``./mlruns``) into a point's run: its runs' params, tags,
full metric histories and artifacts go into the point's run (one run in the tarball) or into
child runs nested under it (several)."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any

from phpo.schemas.archives import ArchiveError, ArchiveLimits, extract

from .common import NAME_BAD, PARAM_MAX, all_runs, mlflow_key

MAX_MLRUNS_BYTES = 512 * 2**20  # what an mlruns/ tarball may unpack to
MAX_MLRUNS_MEMBERS = 200_000
MAX_MLRUNS_SKIPPED_BYTES = 8 * 2**30  # what such a tarball holds besides its mlruns/, read past
MAX_IMPORT_METRICS = 500_000  # metric history entries taken from one tarball
# tags of an imported run that would re-wire or rename the run they are copied to
_SKIP_TAGS = ("mlflow.parentRunId", "mlflow.rootRunId", "mlflow.runName")


class MlrunsImporter:
    def __init__(self, client: Any, max_artifact_bytes: int):
        self.client = client
        self.max_artifact_bytes = max_artifact_bytes

    def import_mlruns(
        self, aid: int, tarball: Path, scratch: Path, pid: int | None, run_id: str, eid: str
    ) -> str | None:
        """Import the runs of an ``mlruns/`` tarball; None when it holds no run (then the file is
        uploaded as it is). Idempotent: the point's run gets the tag ``phpo.imported.<artifact>``
        after the import; child runs are found again by ``phpo.import_artifact``, and a metric
        entry already in the target run is not written twice."""
        root = extract_mlruns(tarball, scratch)
        if root is None:
            return None
        src = _file_store(root)
        runs = source_runs(src)
        if not runs:
            return None
        budget = [MAX_IMPORT_METRICS]
        if len(runs) == 1:
            r = runs[0]
            marker = f"phpo.imported.{aid}"
            target = self.client.get_run(run_id)
            if marker in target.data.tags:
                return "already imported into the point's run"
            self._copy_run(src, r, target, budget, {marker: r.info.run_id}, _run_dir(root, r))
            return "1 run imported into the point's run"
        found: dict[str, Any] = {}
        for c in all_runs(self.client, eid, f"tags.`phpo.import_artifact` = '{aid}'"):
            found.setdefault(c.data.tags.get("phpo.import_source", ""), c)
        made: dict[str, str] = {}
        for r in parents_first(runs):
            sid = r.info.run_id
            child = found.get(sid)
            if child is None:
                parent = made.get(r.data.tags.get("mlflow.parentRunId", ""), run_id)
                tags = {
                    "mlflow.parentRunId": parent,
                    "phpo.parent_point_id": str(pid),
                    "phpo.import_artifact": str(aid),
                    "phpo.import_source": sid,
                }
                child = self.client.create_run(
                    eid, start_time=r.info.start_time, tags=tags, run_name=r.info.run_name or None
                )
            made[sid] = child.info.run_id
            if child.data.tags.get("phpo.import_complete") == "true":
                continue
            self._copy_run(src, r, child, budget, {}, _run_dir(root, r))
            status = r.info.status if r.info.status in ("FINISHED", "FAILED", "KILLED") else "FINISHED"
            self.client.set_terminated(child.info.run_id, status, end_time=r.info.end_time)
            self.client.set_tag(child.info.run_id, "phpo.import_complete", "true")
        return f"{len(runs)} runs imported as child runs of the point's run"

    def _copy_logged_models(self, r: Any, tid: str, exp_dir: Path, have_model: bool) -> None:
        """The models the payload logged itself (``mlflow.sklearn.log_model(...)`` and the like)
        go to the point's run: the first under ``model/`` (what the registry takes) unless the
        run has one already (``sdk.save_model``), every other under ``models/<name>/``."""
        for name, arts in _logged_models(exp_dir, r.info.run_id):
            size = sum(f.stat().st_size for f in arts.rglob("*") if f.is_file())
            if size > self.max_artifact_bytes:
                self.client.set_tag(
                    tid,
                    f"phpo.model_skipped.{mlflow_key(name)}",
                    f"{size} bytes: over the MLflow bridge's limit of {self.max_artifact_bytes} bytes",
                )
                continue
            dest = "model" if not have_model else f"models/{NAME_BAD.sub('_', name)[:100]}"
            self.client.log_artifacts(tid, str(arts), dest)
            have_model = True

    def _copy_run(
        self, src: Any, r: Any, target: Any, budget: list[int], extra_tags: dict[str, str], run_dir: Path
    ) -> None:
        """Params, tags, full metric histories and artifacts of the file-store run ``r`` (unpacked
        in ``run_dir``) into ``target`` (written last: ``extra_tags``, the import's marker)."""
        from mlflow.entities import Metric, Param, RunTag

        tid = target.info.run_id
        have = target.data.params
        params: list[Param] = []
        conflicts: list[str] = []
        for k, v in r.data.params.items():
            k, v = mlflow_key(k), str(v)[:PARAM_MAX]
            if k in have:  # params are write-once in MLflow: the point's own value stays
                if have[k] != v:
                    conflicts.append(k)
                continue
            params.append(Param(k, v))
        tags = [
            RunTag(mlflow_key(k), str(v)[:PARAM_MAX])
            for k, v in r.data.tags.items()
            if k not in _SKIP_TAGS and not k.startswith("phpo.")
        ]
        if conflicts:
            tags.append(RunTag("phpo.import_param_conflicts", ",".join(conflicts)[:PARAM_MAX]))
        metrics: list[Metric] = []
        for key in sorted(r.data.metrics):
            hist = src.get_metric_history(r.info.run_id, key)
            k = mlflow_key(key)
            if k in target.data.metrics:  # a crash mid-import, or the payload logged it live as well
                seen = {(m.step, m.timestamp, m.value) for m in self.client.get_metric_history(tid, k)}
                hist = [m for m in hist if (m.step, m.timestamp, m.value) not in seen]
            if len(hist) > budget[0]:
                hist = hist[: budget[0]]
                tags.append(
                    RunTag("phpo.import_truncated", f"metric histories cut at {MAX_IMPORT_METRICS} entries")
                )
            budget[0] -= len(hist)
            metrics.extend(Metric(k, m.value, m.timestamp, m.step) for m in hist)
        for i in range(0, len(params), 100):
            self.client.log_batch(tid, params=params[i : i + 100])
        for i in range(0, len(tags), 100):
            self.client.log_batch(tid, tags=tags[i : i + 100])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(tid, metrics=metrics[i : i + 1000])
        arts = run_dir / "artifacts"
        files = [f for f in arts.rglob("*") if f.is_file()] if arts.is_dir() else []
        if (
            files
        ):  # what the payload logged with mlflow.log_artifact(s); a re-import overwrites the same paths
            size = sum(f.stat().st_size for f in files)
            if size > self.max_artifact_bytes:
                self.client.set_tag(
                    tid,
                    "phpo.import_artifacts_skipped",
                    f"{len(files)} files, {size} bytes: over the MLflow bridge's limit of "
                    f"{self.max_artifact_bytes} bytes",
                )
            else:
                self.client.log_artifacts(tid, str(arts))
        self._copy_logged_models(
            r, tid, run_dir.parent, "model" in {f.relative_to(arts).parts[0] for f in files}
        )
        if extra_tags:
            self.client.log_batch(tid, tags=[RunTag(k, v) for k, v in extra_tags.items()])


def _logged_models(exp_dir: Path, run_id: str) -> list[tuple[str, Path]]:
    """(name, artifacts folder) of the MLflow 3 logged models (``mlflow.<flavor>.log_model``) of
    a file-store run: they live beside the runs, in ``<experiment>/models/<id>/``."""
    import yaml

    out = []
    for meta in sorted(exp_dir.glob("models/*/meta.yaml")):
        try:
            m = yaml.safe_load(meta.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        arts = meta.parent / "artifacts"
        if m.get("source_run_id") == run_id and (arts / "MLmodel").is_file():
            out.append((str(m.get("name") or meta.parent.name), arts))
    return out


UnsafeTarball = ArchiveError  # the name this module's callers and tests know


def extract_mlruns(
    tarball: Path, dest: Path, max_bytes: int = MAX_MLRUNS_BYTES, max_members: int = MAX_MLRUNS_MEMBERS
) -> Path | None:
    """Unpack the ``mlruns/`` folder of ``tarball`` (at any depth; the first one found) under
    ``dest``; returns that folder, or None when there is none. Only regular files are written
    (the runs' ``artifacts/`` too: they go to the imported runs; links and devices are left out),
    by the same code as the agent's sandboxes and checkpoints
    (:func:`phpo.schemas.archives.extract`). A member with an absolute name or ``..``, more than
    ``max_members`` members or more than ``max_bytes`` unpacked: :class:`UnsafeTarball`."""
    base = dest / "mlruns"
    prefix: list[tuple[str, ...]] = []

    def select(parts: tuple[str, ...], m: tarfile.TarInfo) -> tuple[str, ...] | None:
        if "mlruns" not in parts:
            return None
        i = parts.index("mlruns")
        if not prefix:
            prefix.append(parts[: i + 1])
        elif parts[: i + 1] != prefix[0]:
            return None
        rel = parts[i + 1 :]
        if not rel or not m.isfile():
            return None  # folders are made as needed
        return rel

    base.mkdir(parents=True, exist_ok=True)
    limits = ArchiveLimits(
        max_members=max_members,
        max_member_bytes=max_bytes,
        max_total_bytes=max_bytes,
        max_skipped_bytes=MAX_MLRUNS_SKIPPED_BYTES,
    )
    extract(tarball, base, limits=limits, select=select, skip_other=True)
    if not prefix:
        return None
    for meta in base.glob("*/*/meta.yaml"):  # a run: MLflow's reader wants all its folders, empty or not
        for sub in ("metrics", "params", "tags", "artifacts"):
            (meta.parent / sub).mkdir(exist_ok=True)
    return base


def _run_dir(root: Path, r: Any) -> Path:
    """Where the file-store run ``r`` was unpacked (its meta.yaml names the payload's own paths)."""
    return root / r.info.experiment_id / r.info.run_id


def _file_store(root: Path) -> Any:
    """MLflow's own reader of the file-store layout. MLflow 3 keeps it in maintenance mode and
    refuses to build it unless MLFLOW_ALLOW_FILE_STORE is set: set just for this read-only use."""
    from mlflow.store.tracking.file_store import FileStore

    old = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        return FileStore(str(root))
    finally:
        if old is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = old


def source_runs(src: Any) -> list:
    """The active runs of every active experiment of a file store."""
    from mlflow.entities import ViewType

    exps = [e.experiment_id for e in src.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000)]
    runs: list = []
    token = None
    while exps:
        page = src.search_runs(exps, None, ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def parents_first(runs: list) -> list:
    """Runs ordered so that a run nested under another run of the same list comes after it."""
    by_id = {r.info.run_id: r for r in runs}

    def depth(r: Any) -> int:
        d, seen = 0, set()
        while (p := r.data.tags.get("mlflow.parentRunId")) in by_id and p not in seen:
            seen.add(p)
            r, d = by_id[p], d + 1
        return d

    return sorted(runs, key=lambda r: (depth(r), r.info.start_time or 0, r.info.run_id))
