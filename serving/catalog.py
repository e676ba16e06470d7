"""Which models the service serves, and each one loaded once per worker.

Three sources: registered models named at start (``--model NAME:VERSION``), every segment's
model of a task (``--task ID``) or of a workflow's ``serve`` nodes (``--workflow ID``), both
looked up at the phpo server and looked at again until registered; and models named or uploaded
through the API while the service runs. Those last ones are written to ``catalog.json`` in the
service's state folder, which every worker reads again when it changes, so a model added
through one worker is served by all of them.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CATALOG = "catalog.json"


class CatalogError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def settle_heap() -> None:
    """Keep the objects alive now (the imported libraries, a loaded model: some 320,000 in a
    worker with torch and MLflow) out of Python's full garbage collections from now on.

    Without this a worker under load runs a full collection about twice a second, each
    traversing all of them for ~100 ms while no request is answered: that was the p99 of a
    batching service (measured with ``gc.callbacks``). ``gc.freeze`` moves them to the permanent
    generation; later collections look only at what requests allocate."""
    import gc

    gc.collect()
    gc.freeze()


@dataclass
class Entry:
    name: str
    version: str
    uri: str  # models:/NAME/VERSION, or the folder of an uploaded model
    owner: str | None
    origin: str = "registry"  # registry | upload
    tags: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    _model: Any = field(default=None, repr=False)
    _direct: Any = field(
        default=None, repr=False
    )  # the torch module of a PyTorch model, called without pyfunc
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    n_features: int | None = None
    dtype: str = "float32"
    outputs: list[int | None] | None = None

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    def load(self) -> Any:
        """The pyfunc model (loaded on first use; its signature gives the feature count/type)."""
        with self._lock:
            if self._model is None:
                import mlflow.pyfunc

                m = mlflow.pyfunc.load_model(self.uri)
                self._read_schema(m)
                self._direct = _torch_module(m) if self.n_features is not None else None
                self._model = m
                settle_heap()
            return self._model

    def _read_schema(self, m: Any) -> None:
        schema = m.metadata.get_input_schema()
        if schema is None:
            return
        inputs = schema.inputs
        if schema.is_tensor_spec():
            shape = inputs[0].shape
            self.n_features = shape[-1] if len(shape) == 2 and shape[-1] != -1 else None
            self.dtype = str(inputs[0].type)
        else:  # a column schema: one column per feature
            self.n_features = len(inputs)
            self.dtype = "float64"
        out = m.metadata.get_output_schema()
        if out is not None and out.is_tensor_spec():
            self.outputs = [None if d == -1 else d for d in out.inputs[0].shape[1:]]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The model's answer for ``x`` (rows already checked against the signature by
        ``rows_of``). A PyTorch model on the CPU is called directly, under ``torch.inference_mode``:
        what MLflow's pyfunc wrapper would do for an array (``torch.from_numpy``, forward, ``.numpy()``)
        without its per-call schema enforcement, which cost about as much as a one-row forward pass of
        TFaaS's model."""
        m = self.load()
        if self._direct is not None:
            import torch

            with torch.inference_mode():
                out = self._direct(torch.from_numpy(x))
            if isinstance(out, torch.Tensor):
                return out.numpy()
            self._direct = None  # not one tensor: pyfunc's way from now on (it raises a clear error)
        out = m.predict(x)
        if hasattr(out, "to_numpy"):
            out = out.to_numpy()
        return np.asarray(out)

    def describe(self) -> dict[str, Any]:
        t = self.tags
        return {
            "name": self.name,
            "version": self.version,
            "uri": self.uri,
            "origin": self.origin,
            "owner": self.owner,
            "features": self.n_features,
            "dtype": self.dtype,
            "outputs": self.outputs,
            "task_id": _int(t.get("phpo.task_id")),
            "segment": t.get("phpo.segment") or None,
            "point_id": _int(t.get("phpo.point_id")),
            "loss": _json(t.get("loss")),
            "params": {k[6:]: v for k, v in t.items() if k.startswith("param.")},
            "description": self.description,
        }


def _torch_module(m: Any) -> Any:
    """The torch module behind a pyfunc model of the ``mlflow.pytorch`` flavor, on the CPU and
    not a forecasting model (those take DataFrames); None for every other model."""
    impl = getattr(m, "_model_impl", None)
    if type(impl).__name__ != "_PyTorchWrapper" or type(impl).__module__ != "mlflow.pytorch":
        return None
    if str(getattr(impl, "device", "cpu")) != "cpu" or getattr(impl, "_is_forecasting_model", True):
        return None
    return getattr(impl, "pytorch_model", None)


def _int(v: str | None) -> int | None:
    return int(v) if v and v.isdigit() else None


def _json(v: str | None) -> Any:
    try:
        return json.loads(v) if v else None
    except ValueError:
        return v


def parse_ref(ref: str) -> tuple[str, str]:
    name, sep, version = ref.rpartition(":")
    if not sep or not name or not version.isdigit():
        raise ValueError(
            f"model {ref!r}: give NAME:VERSION (e.g. user.me.higgs:3; phpo best ID --model prints it)"
        )
    return name, version


class Catalog:
    def __init__(self, mlflow_uri: str, state_dir: Path):
        self.mlflow_uri = mlflow_uri
        self.state_dir = state_dir
        self.entries: dict[str, Entry] = {}
        self._static: set[str] = set()
        self._mtime: float | None = None
        self._client: Any = None
        import mlflow

        mlflow.set_tracking_uri(mlflow_uri)  # models:/ URIs are resolved against it
        mlflow.set_registry_uri(mlflow_uri)

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.mlflow_uri, registry_uri=self.mlflow_uri)
        return self._client

    def registered(self, name: str, version: str) -> Entry:
        """The registry's model version NAME:VERSION (owner: its ``phpo.owner`` tag)."""
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(name, version)
        except MlflowException as e:
            raise CatalogError(
                404,
                f"model {name}:{version} is not in MLflow's model registry at {self.mlflow_uri}",
                field="name",
            ) from e
        tags = dict(mv.tags or {})
        return Entry(
            name=name,
            version=str(version),
            uri=f"models:/{name}/{version}",
            owner=tags.get("phpo.owner"),
            tags=tags,
            description=mv.description,
        )

    def add_static(self, e: Entry) -> None:
        self.entries[e.key] = e
        self._static.add(e.key)

    # ------------------------------------------------------------ the shared file

    @property
    def path(self) -> Path:
        return self.state_dir / CATALOG

    def refresh(self) -> None:
        """Take the models added through any worker (``catalog.json`` changed)."""
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        for d in json.loads(self.path.read_text() or "[]"):
            key = f"{d['name']}:{d['version']}"
            if key not in self.entries:
                self.entries[key] = Entry(
                    name=d["name"],
                    version=d["version"],
                    uri=d["uri"],
                    owner=d.get("owner"),
                    origin=d.get("origin", "registry"),
                    tags=d.get("tags") or {},
                    description=d.get("description"),
                )

    def add_shared(self, make: Any) -> Entry:
        """``make(existing entries)`` -> a new Entry, appended to ``catalog.json`` under a lock."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / (CATALOG + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._mtime = None
            self.refresh()
            e = make(self.entries)
            if e.key not in self.entries:
                rows = json.loads(self.path.read_text() or "[]") if self.path.exists() else []
                rows.append(
                    {
                        "name": e.name,
                        "version": e.version,
                        "uri": e.uri,
                        "owner": e.owner,
                        "origin": e.origin,
                        "tags": e.tags,
                        "description": e.description,
                    }
                )
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(rows))
                os.replace(tmp, self.path)
                self.entries[e.key] = e
            return self.entries[e.key]

    def get(self, name: str, version: str | None) -> Entry:
        self.refresh()
        if version is None:
            versions = [e for e in self.entries.values() if e.name == name]
            if versions:
                return max(versions, key=lambda e: int(e.version))
        elif (e := self.entries.get(f"{name}:{version}")) is not None:
            return e
        served = ", ".join(sorted(self.entries)) or "none"
        raise CatalogError(
            404,
            f"model {name}{':' + version if version else ''} is not served here "
            f"(served: {served}; GET /v1/models lists them)",
            field="name",
        )
