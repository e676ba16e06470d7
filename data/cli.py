"""``phpo data specs|read|train``: MLaaS4HEP's reader and workflow command lines.

    phpo data specs --fin a.root,b.root --fout specs.json --branch Events
    phpo data read  --fin a.root --specs specs.json --nevts 5
    phpo data train --files files.txt --labels labels.txt --model model.py --params params.json

``train`` runs alone or as an HPO payload (``--evaluationExec "phpo data train ..."`` with
``--evaluationInput params.json``): the point's values arrive in ``params.json``, the job's
training files are used when ``--files`` is not given, and the validation loss is the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from .errors import DataError
from .specs import DEFAULT_CHUNK

# MLaaS4HEP's params.json keys this command reads (the others are refused or passed to model())
PARAMS_KEYS = (
    "nevts",
    "chunk_size",
    "epochs",
    "batch_size",
    "shuffle",
    "branch",
    "selected_branches",
    "exclude_branches",
    "identifier",
    "redirector",
    "verbose",
    "nan",
)
# phpo's own additions
EXTRA_KEYS = ("lr", "seed", "validation_split", "normalise", "jagged_cap", "label_branch", "workers")
# MLaaS4HEP keys that do something phpo does not do: a clear error rather than silence
UNSUPPORTED_KEYS = {
    "hist": "histograms of the inputs are not made",
    "preproc": "pre-processing functions are not run",
    "cuts": "event cuts are not applied",
    "model_params": "give the model's arguments as params keys",
}
DEFAULT_IDENTIFIER = "run,event,luminosityBlock"  # MLaaS4HEP's default; names a file lacks are ignored


def _csv(v: str | list | None) -> list[str]:
    if v is None:
        return []
    if isinstance(v, list):
        return [str(x) for x in v]
    return [x.strip() for x in str(v).split(",") if x.strip()]


def _files(arg: str) -> list[str]:
    """A comma-separated list, or a text file of names (one a line, ``#`` comments)."""
    if arg.endswith(".txt") and os.path.isfile(arg):
        with open(arg) as f:
            return [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    return _csv(arg)


def _nan(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise DataError(f"--nan/nan: {v!r} is not a number (use nan, 0, -1, ...)") from None


def _reader_options(p: argparse.ArgumentParser, nevts_default: int) -> None:
    p.add_argument("--fin", required=True, help="input file(s): comma-separated, or a .txt file of names")
    p.add_argument("--fout", help="write the specs JSON here")
    p.add_argument(
        "--branch",
        default=None,
        help="the ROOT tree (MLaaS4HEP's --branch; default: the file's only tree, else Events)",
    )
    p.add_argument(
        "--identifier",
        default=DEFAULT_IDENTIFIER,
        help="event identifier branches, not features "
        f"(default {DEFAULT_IDENTIFIER}; those a file lacks are ignored)",
    )
    p.add_argument(
        "--branches", default="", help="comma-separated branches (or glob patterns) to read; default all"
    )
    p.add_argument(
        "--exclude-branches", default="", help="comma-separated branches (or patterns) to leave out"
    )
    p.add_argument(
        "--nevts", type=int, default=nevts_default, help=f"events per file (-1: all; default {nevts_default})"
    )
    p.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK, help=f"events per read (default {DEFAULT_CHUNK})"
    )
    p.add_argument("--specs", help="a specs JSON (ours or MLaaS4HEP's) instead of a specs pass")
    p.add_argument(
        "--redirector",
        default="root://cms-xrd-global.cern.ch",
        help="XRootD redirector for /store/... names that are not local files",
    )
    p.add_argument(
        "--nan", default="nan", help="value of padded jagged slots and NaN values (default nan, as MLaaS4HEP)"
    )
    p.add_argument(
        "--info", action="store_true", help="print the files' trees: events, branches and their kinds"
    )
    p.add_argument("--verbose", type=int, default=0)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phpo data", description="HEP data streaming (MLaaS4HEP's reader and workflow)."
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    s = sub.add_parser(
        "specs", help="one pass over the files: per-branch min/max, jagged lengths, NaN counts, events"
    )
    _reader_options(s, -1)
    s = sub.add_parser("read", help="print the first events as normalised, padded vectors with their masks")
    _reader_options(s, 5)
    s = sub.add_parser("train", help="train model.py's model(idim) on the files (alone or as an HPO payload)")
    s.add_argument(
        "--files",
        help="files.txt (one input file a line) or a comma-separated list; default: the "
        "HPO job's training files",
    )
    s.add_argument(
        "--labels",
        help="labels.txt (one label a line, one per file; or a single branch name holding "
        "each event's label) or a comma-separated list",
    )
    s.add_argument(
        "--model",
        required=True,
        help="model.py defining model(idim) -> torch.nn.Module or compiled Keras model",
    )
    s.add_argument("--params", help="params.json (MLaaS4HEP's keys; an HPO point's values)")
    s.add_argument("--specs", help="a specs JSON instead of a specs pass")
    s.add_argument("--fout", help="save the trained model here (PyTorch: state_dict; Keras: model.save)")
    return p


def _open_infos(files: list[str], tree: str | None, redirector: str | None) -> list[dict[str, Any]]:
    from .readers import open_reader

    out = []
    for f in files:
        r = open_reader(f, tree=tree, redirector=redirector)
        out.append(
            {
                "file": f,
                "tree": getattr(r, "tree_name", None),
                "events": r.num_events,
                "flat": [k for k, v in r.columns.items() if v == "flat"],
                "jagged": [k for k, v in r.columns.items() if v == "jagged"],
                "skipped": r.skipped,
            }
        )
        r.close()
    return out


def cmd_specs_or_read(a: argparse.Namespace) -> int:
    from .chunks import Stream
    from .specs import Specs, compute_specs

    files = _files(a.fin)
    if a.info:
        for info in _open_infos(files, a.branch, a.redirector):
            print(json.dumps(info, indent=1))
        if a.command == "specs" and not a.fout:
            return 0
    opts = dict(
        tree=a.branch,
        branches=_csv(a.branches) or None,
        exclude_branches=_csv(a.exclude_branches) or None,
        identifier=_csv(a.identifier),
        nevts=a.nevts if a.command == "specs" else -1,
        redirector=a.redirector,
    )
    specs = Specs.load(a.specs) if a.specs else compute_specs(files, chunk_size=a.chunk_size, **opts)
    if a.fout:
        specs.save(a.fout)
        if a.verbose:
            print(f"specs written to {a.fout}", file=sys.stderr)
    if a.command == "specs":
        if not a.fout:
            print(specs.to_json())
        return 0
    s = Stream(
        files,
        specs=specs,
        shuffle=False,
        chunk_size=max(1, a.nevts if a.nevts > 0 else a.chunk_size),
        pad_value=_nan(a.nan),
        **{k: v for k, v in opts.items() if k != "nevts"},
    )
    print(json.dumps({"columns": s.columns, "dim": s.dim, "events": s.num_events}))
    left = a.nevts if a.nevts >= 0 else s.num_events
    for b in s.batches(min(max(left, 1), 1000)):
        for i in range(min(left, len(b))):
            row = {"x": [None if math.isnan(v) else v for v in b.x[i].tolist()], "mask": b.mask[i].tolist()}
            row.update({k: v[i].item() for k, v in b.ids.items()})
            print(json.dumps(row))
        left -= min(left, len(b))
        if left <= 0:
            break
    return 0


def _labels(arg: str | None, n_files: int) -> tuple[list[float] | None, str | None]:
    if not arg:
        return None, None
    vals = _files(arg)
    try:
        return [float(v) for v in vals], None
    except ValueError:
        if len(vals) == 1:
            return None, vals[0]  # a branch holding each event's label
        raise DataError(f"--labels: {vals} are neither one number per file nor one branch name") from None


def _job_files() -> list[str]:
    """The HPO job's training files (the agent's PHPO_TRAINING_DATA_FILE), when run as a payload."""
    path = os.environ.get("PHPO_TRAINING_DATA_FILE")
    if not path:
        return []
    full = Path(os.environ.get("PHPO_WORKDIR") or ".") / path
    if not full.exists():
        return []
    data = json.loads(full.read_text())
    return [str(x) for x in data] if isinstance(data, list) else []


def _write_result(loss: float, metrics: dict[str, Any], status: int = 0, message: str | None = None) -> None:
    """The evaluation's output file (when run by the phpo agent), in the payload contract's form."""
    name = os.environ.get("PHPO_OUTPUT_FILE")
    if not name:
        return
    path = Path(os.environ.get("PHPO_WORKDIR") or ".") / name
    out: dict[str, Any] = {"status": status, "loss": loss if status == 0 else None, "metrics": metrics}
    if message:
        out["message"] = message
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out))
    tmp.replace(path)


def cmd_train(a: argparse.Namespace) -> int:
    from .chunks import Stream
    from .specs import default_cache_dir
    from .train import build_model, fit, load_model_function

    params: dict[str, Any] = {}
    if a.params:
        try:
            params = json.loads(Path(a.params).read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read the params file: {e}", a.params) from e
        if not isinstance(params, dict):
            raise DataError("params must be a JSON object", a.params)
    for k, why in UNSUPPORTED_KEYS.items():
        if k in params and params[k] not in (None, "", False, [], {}):
            raise DataError(f"params key '{k}' is not supported: {why}", a.params)
    files = _files(a.files) if a.files else _job_files()
    if not files:
        raise DataError(
            "no input files: give --files, or run as an HPO job with training files (--trainingDS)"
        )
    labels, label_branch = _labels(a.labels, len(files))
    label_branch = params.get("label_branch", label_branch)
    if labels is None and label_branch is None:
        raise DataError("no labels: give --labels (labels.txt: one per file, or a branch name)")
    verbose = int(params.get("verbose", 0) or 0)
    nevts = int(params.get("nevts", -1))
    stream = Stream(
        files,
        labels=labels,
        label_branch=label_branch,
        tree=params.get("branch") or None,
        branches=_csv(params.get("selected_branches")) or None,
        exclude_branches=_csv(params.get("exclude_branches")) or None,
        identifier=_csv(params.get("identifier", DEFAULT_IDENTIFIER)),
        specs=a.specs,
        cache_dir=default_cache_dir(),
        chunk_size=int(params.get("chunk_size", 10_000)),
        nevts=nevts,
        shuffle=bool(params.get("shuffle", True)),
        seed=int(params.get("seed", 0)),
        normalise=params.get("normalise", "minmax"),
        jagged_cap=params.get("jagged_cap"),
        pad_value=_nan(params.get("nan", 0.0)),
        redirector=params.get("redirector") or None,
        workers=int(params.get("workers", 1)),
    )
    split = float(params.get("validation_split", 0.2))
    train, val = stream.split(split) if split > 0 else (stream, None)
    fn = load_model_function(a.model)
    torch = sys.modules.get("torch")  # model.py imported it: seed the weights' initialisation
    if torch is not None:
        torch.manual_seed(int(params.get("seed", 0)))
    known = set(PARAMS_KEYS) | set(EXTRA_KEYS)
    model, passed = build_model(fn, stream.dim, {k: v for k, v in params.items() if k not in known})
    ignored = [k for k in params if k not in known and k not in passed]
    if ignored:
        print(
            f"phpo data train: params keys not used (neither MLaaS4HEP's nor arguments of model()): "
            f"{', '.join(ignored)}",
            file=sys.stderr,
        )
    if verbose:
        print(
            f"{len(files)} files, {stream.num_events} events, idim {stream.dim}, specs {stream.specs_source}",
            file=sys.stderr,
        )
    result = fit(
        model,
        train,
        val,
        epochs=int(params.get("epochs", 1)),
        batch_size=int(params.get("batch_size", 100)),
        lr=float(params.get("lr", 1e-3)),
        verbose=verbose,
    )
    metrics = {
        "accuracy": result["accuracy"],
        "idim": stream.dim,
        "events": stream.num_events,
        "specs": stream.specs_source,
        "framework": result["framework"],
    }
    if a.fout:
        if result["framework"] == "torch":
            import torch

            torch.save(model.state_dict(), a.fout)
        else:
            model.save(a.fout)
    loss = result["loss"]
    if not (isinstance(loss, float) and math.isfinite(loss)):
        _write_result(loss, metrics, status=1, message=f"the validation loss is not finite ({loss})")
        print(json.dumps({"loss": None, **metrics}))
        return 1
    _write_result(loss, metrics)
    print(json.dumps({"loss": loss, **metrics}))
    return 0


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        if a.command == "train":
            return cmd_train(a)
        return cmd_specs_or_read(a)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
