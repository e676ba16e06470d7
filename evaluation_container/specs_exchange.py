"""The task's data specs, shared by its jobs through the server's artifact store.

A payload that streams its training files with :mod:`phpo.data` (``sdk.training_data()``)
makes one specs pass over them and keeps the result in ``PHPO_DATA_CACHE``. For a job with
training files the agent, before the first point:

* lists the task's ``specs`` artifacts (``GET /jobs/{id}/specs``) and downloads those it lacks
  into the data cache as ``shared-<content key>.json``, which :mod:`phpo.data` uses when the
  files' names, sizes and head/tail digests are the ones the specs were made of;
* sets ``PHPO_DATA_CACHE`` for the payload. A payload run as a plain process of the agent's own
  account gets the agent's data cache (``PHPO_DATA_CACHE`` of the agent, else
  ``~/.cache/phpo/data``): the jobs side by side on the machine share it, and one specs pass
  serves them all (they wait on its lock). A payload in a container, as another account or on a
  Dask worker gets ``.phpo/data-cache`` in its working directory, which it can see and write.

After each point the agent uploads every specs file that appeared or changed in that directory,
describes exactly the job's training files and is not yet one of the task's artifacts, named
``specs-<content key>.json``. The first upload of a key wins; one sent at the same time by
another agent is answered 409 and dropped (both copies have the same content by construction of
the key). Specs are small (at most 8 MiB), so any failure here is logged and the job goes on: a
payload then makes its own specs pass.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from phpo.client.errors import Conflict, PhpoError
from phpo.schemas.archives import open_beneath, write_beneath
from phpo.schemas.artifacts import ArtifactKind
from phpo.schemas.data_specs import (
    ENV_CACHE,
    SPECS_MAX_BYTES,
    SPECS_NAME,
    default_cache_dir,
    shared_specs_name,
    specs_content_key,
)

from .runners.subprocess import SubprocessExecutor

if TYPE_CHECKING:
    from .job_runner import JobRunner
    from .runners.base import Executor

log = logging.getLogger("phpo.agent.specs")

RUN_CACHE = ".phpo/data-cache"  # inside a job's working directory


class SpecsExchange:
    def __init__(self, runner: JobRunner, root: Path, prefix: str, seen: str):
        self.runner = runner
        self.job_id = runner.job.id
        self.files = [str(f) for f in runner.job.evaluation.training_files]
        self.root, self.prefix, self.seen = root, prefix, seen  # the directory is root/prefix
        self.known: set[str] = set()  # content keys the task has on the server
        self.seen_files: dict[str, tuple[int, int]] = {}

    @classmethod
    def start(cls, runner: JobRunner, executor: Executor, seen_workdir: str) -> SpecsExchange | None:
        """The exchange of a job with training files, its task's specs already fetched; None
        for a job without training files."""
        ev = runner.job.evaluation
        if ev is None or not ev.training_files:
            return None
        try:
            return cls._start(runner, executor, seen_workdir)
        except Exception as e:  # noqa: BLE001 - sharing specs is an optimisation; the job goes on
            log.warning("job %d: the task's specs are not shared for this job: %s", runner.job.id, e)
            return None

    @classmethod
    def _start(cls, runner: JobRunner, executor: Executor, seen_workdir: str) -> SpecsExchange:
        if type(executor) is SubprocessExecutor and runner.owner is None:
            root = default_cache_dir()
            root.mkdir(parents=True, exist_ok=True)
            ex = cls(runner, root, "", str(root))
        else:
            ex = cls(runner, runner.rundir, RUN_CACHE + "/", f"{seen_workdir.rstrip('/')}/{RUN_CACHE}")
        ex.fetch()
        ex.seen_files = ex.listing()
        return ex

    @property
    def env(self) -> dict[str, str]:
        return {ENV_CACHE: self.seen}

    @property
    def directory(self) -> Path:
        return self.root / self.prefix

    def listing(self) -> dict[str, tuple[int, int]]:
        """The directory's ``specs-*.json`` files: name -> (size, mtime in ns)."""
        out = {}
        try:
            with os.scandir(self.directory) as it:
                for e in it:
                    if (
                        e.name.startswith("specs-")
                        and e.name.endswith(".json")
                        and e.is_file(follow_symlinks=False)
                    ):
                        st = e.stat(follow_symlinks=False)
                        out[e.name] = (st.st_size, st.st_mtime_ns)
        except OSError:
            pass
        return out

    def fetch(self) -> None:
        try:
            arts = self.runner.api.task_specs(
                self.job_id, retry_seconds=min(self.runner.cfg.retry_seconds, 30)
            )
        except PhpoError as e:
            log.warning("job %d: cannot list the task's specs: %s", self.job_id, e)
            return
        for a in arts:
            if not SPECS_NAME.fullmatch(a.name) or a.size > SPECS_MAX_BYTES:
                continue
            key = a.name[len("specs-") : -len(".json")]
            self.known.add(key)
            if (self.directory / f"shared-{key}.json").exists():
                continue
            tmp = self.runner.scratch / f"download-{a.name}"
            try:
                self.runner.api.download_artifact(
                    a.id, tmp, retry_seconds=min(self.runner.cfg.retry_seconds, 30)
                )
                write_beneath(
                    self.root, f"{self.prefix}shared-{key}.json", tmp.read_bytes(), owner=self.runner.owner
                )
                log.info(
                    "job %d: specs %s of task %d fetched (artifact %d)",
                    self.job_id,
                    key,
                    self.runner.job.task_id,
                    a.id,
                )
            except (PhpoError, OSError) as e:
                log.warning("job %d: cannot fetch the specs artifact %d: %s", self.job_id, a.id, e)
            finally:
                tmp.unlink(missing_ok=True)

    def read(self, name: str) -> dict[str, Any] | None:
        """A specs file the payload wrote (no link followed, at most SPECS_MAX_BYTES)."""
        try:
            fd = open_beneath(self.root, self.prefix + name, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > SPECS_MAX_BYTES:
                return None
            try:
                data = json.loads(f.read())
            except ValueError:
                return None
        return data if isinstance(data, dict) else None

    def publish(self) -> None:
        """Upload the specs of the job's files the point's payload made and the task lacks."""
        try:
            self._publish()
        except Exception as e:  # noqa: BLE001 - a lost upload costs another job a specs pass, no more
            log.warning("job %d: cannot publish the payload's specs: %s", self.job_id, e)

    def _publish(self) -> None:
        now = self.listing()
        fresh = [n for n, st in now.items() if self.seen_files.get(n) != st]
        self.seen_files = now
        for name in fresh:
            data = self.read(name)
            fp = data.get("fingerprint") if data else None
            if not isinstance(fp, list) or [e[0] for e in fp if isinstance(e, list) and e] != self.files:
                continue  # another task's files (the machine's cache is shared), or not ours to say
            key = specs_content_key(data)
            if key is None or key in self.known:
                continue
            tmp = self.runner.scratch / f"upload-{name}"
            tmp.write_text(json.dumps(data))
            try:
                art = self.runner.api.upload_artifact(
                    self.job_id,
                    ArtifactKind.specs,
                    tmp,
                    shared_specs_name(key),
                    retry_seconds=min(self.runner.cfg.retry_seconds, 30),
                )
                log.info(
                    "job %d: specs %s uploaded for task %d (artifact %d)",
                    self.job_id,
                    key,
                    self.runner.job.task_id,
                    art.id,
                )
                self.known.add(key)
            except Conflict:
                self.known.add(key)  # another job of the task was first: same key, same content
            except PhpoError as e:
                log.warning("job %d: cannot upload the specs %s: %s", self.job_id, key, e)
            finally:
                tmp.unlink(missing_ok=True)
