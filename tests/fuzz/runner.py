"""Schemathesis over the whole phpo API, as each role, on SQLite and PostgreSQL.

``make fuzz`` runs this file: for each database a real server (``python -m phpo.server``) is
started, a user, an agent and an admin token are made, a little data is seeded (a sandbox, a
task with leased and evaluated points, a workflow) so that ids in paths reach real rows, and
``schemathesis run`` is pointed at ``/api/v1/openapi.json`` once per token, bounded by
``--max-time`` seconds. The figures are the cases sent, the 5xx answers per role and database,
and the distinct server errors, grouped by operation and by the error the server named::

    python tests/fuzz/runner.py                       # both databases, 60 s per role
    python tests/fuzz/runner.py --max-time 30 --db sqlite
    python tests/fuzz/runner.py --json fuzz.json      # the figures as JSON as well

It exits 1 when any 5xx was seen. ``tests/fuzz/test_schemathesis.py`` runs the same
:func:`fuzz_role` with a handful of examples per operation inside ``make test``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
ROLES = ("user", "agent", "admin")


@dataclass
class RoleResult:
    """What one schemathesis run saw."""

    role: str
    database: str
    cases: int = 0
    server_errors: int = 0
    no_answer: int = 0  # requests that got no response (timeouts, dropped connections)
    failures: Counter = field(default_factory=Counter)  # "METHOD /path: what the server said" -> count
    exit_code: int = 0
    seconds: float = 0.0
    examples: dict[str, str] = field(default_factory=dict)  # group -> one request that produced it

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "database": self.database,
            "cases": self.cases,
            "server_errors": self.server_errors,
            "no_answer": self.no_answer,
            "failures": dict(self.failures.most_common()),
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 1),
            "examples": self.examples,
        }


def _sandbox() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"print('hello')\n"
        info = tarfile.TarInfo("train.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def seed(url: str, tokens: dict[str, str]) -> None:
    """Rows for the fuzzed ids to hit: each user-like token gets a sandbox, a task and a workflow;
    the agent leases a job of the user's task and reports one result."""
    api = url + "/api/v1"
    for role in ("user", "admin"):
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {tokens[role]}"}, timeout=30) as c:
            c.put("/sandboxes", content=_sandbox(), params={"name": "sandbox.tar.gz"}).raise_for_status()
            # many points in parallel: a fuzzed acquire finds one at once instead of long-polling
            c.post(
                "/tasks",
                json={
                    "evaluationExec": "python train.py",
                    "optimizer": "random",
                    "maxPoints": 100_000,
                    "nParallelEvaluation": 30,
                    "nPointsPerIteration": 30,
                    "searchSpace": {
                        "x": {"method": "uniform", "dimension": {"low": 0.0, "high": 1.0}},
                        "c": {"method": "categorical", "dimension": {"categories": ["a", "b"]}},
                    },
                },
            ).raise_for_status()
            c.post(
                "/workflows",
                json={
                    "definition": {
                        "name": "fuzz-seed",
                        "nodes": [{"name": "one", "kind": "job", "exec": "python train.py"}],
                    }
                },
            ).raise_for_status()
    with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {tokens['agent']}"}, timeout=30) as c:
        job = None
        deadline = time.monotonic() + 20
        while job is None and time.monotonic() < deadline:
            r = c.post("/jobs/acquire", json={"agent": "fuzz-seed", "site": "local", "kinds": ["evaluation"]})
            if r.status_code == 200:
                job = r.json()
            else:
                time.sleep(0.2)
        if job is not None:
            pid = job["points"][0]["point_id"]
            c.post(
                f"/jobs/{job['id']}/points/{pid}/result",
                json={"point_id": pid, "loss": 0.5, "metrics": {"acc": 0.9}},
            ).raise_for_status()


_QUOTED = re.compile(r"'[^'\s]*'|\"[^\"]*\"")


def _group(operation: str, status: int, content: dict | None) -> str:
    """One name for the same bug: the operation and what the 5xx answer says, with the values
    (numbers, quoted words) taken out."""
    body = ""
    if content and "$base64" in content:
        with contextlib.suppress(ValueError):
            body = base64.b64decode(content["$base64"]).decode("utf-8", "replace")
    elif content and "string" in content:
        body = content["string"]
    what = f"HTTP {status}"
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        msg = str(json.loads(body).get("message", "")).removeprefix("the server failed: ")
        if msg:
            what = re.sub(r"\d+", "N", _QUOTED.sub("_", msg.splitlines()[0]))[:80]
    return f"{operation}: {what}"


def _read_report(path: Path, result: RoleResult) -> None:
    for line in path.read_text().splitlines():
        event = json.loads(line)
        fin = event.get("ScenarioFinished")
        if not fin or "interactions" not in fin.get("recorder", {}):
            continue
        rec = fin["recorder"]
        for case_id, inter in rec["interactions"].items():
            resp = inter.get("response")
            case = rec.get("cases", {}).get(case_id, {}).get("value", {})
            operation = (
                f"{case['method']} {case['path']}" if "method" in case and "path" in case else rec["label"]
            )
            result.cases += 1
            if resp is not None and resp.get("status_code", 0) < 500:
                continue
            if resp is None:
                result.no_answer += 1
                g = f"{operation}: no answer"
            else:
                result.server_errors += 1
                g = _group(operation, resp["status_code"], resp.get("content"))
            result.failures[g] += 1
            if g not in result.examples:
                result.examples[g] = json.dumps(
                    {k: case.get(k) for k in ("path_parameters", "query", "body") if case.get(k) is not None},
                    default=str,
                )[:300]


def fuzz_role(
    url: str,
    token: str,
    role: str,
    database: str,
    *,
    max_time: float | None = None,
    max_examples: int | None = None,
    workers: int = 2,
    seed_value: int | None = None,
    report_dir: Path | None = None,
    phases: str | None = None,
    timeout: float = 900,
) -> RoleResult:
    """``schemathesis run`` over the whole spec with ``token``; every response counted, 5xx grouped."""
    result = RoleResult(role=role, database=database)
    with tempfile.TemporaryDirectory() as tmp:
        rdir = Path(report_dir or tmp)
        ndjson = rdir / f"{database}-{role}.ndjson"
        cmd = [
            str(SCHEMATHESIS),
            "run",
            f"{url}/api/v1/openapi.json",
            "-H",
            f"Authorization: Bearer {token}",
            "--checks",
            "not_a_server_error",
            "--no-shrink",
            "--workers",
            str(workers),
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(ndjson),
            "--request-timeout",
            "30",
            "--continue-on-failure",
            "--suppress-health-check",
            "all",
            "--warnings",
            "off",
        ]
        if max_time:
            cmd += ["--max-time", str(int(max_time))]
        if max_examples:
            cmd += ["--max-examples", str(max_examples)]
        if seed_value is not None:
            cmd += ["--seed", str(seed_value)]
        if phases:
            cmd += ["--phases", phases]
        t0 = time.monotonic()
        p = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
        result.seconds = time.monotonic() - t0
        result.exit_code = p.returncode
        if not ndjson.exists():
            raise RuntimeError(
                f"schemathesis wrote no report (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
            )
        _read_report(ndjson, result)
    return result


def table(results: list[RoleResult]) -> str:
    lines = [
        "| database | role | cases | 5xx | distinct 5xx | no answer | seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.database} | {r.role} | {r.cases} | {r.server_errors} | {len(r.failures) - bool(r.no_answer)} "
            f"| {r.no_answer} | {r.seconds:.0f} |"
        )
    lines.append("")
    lines.append(f"cases {sum(r.cases for r in results)}, 5xx {sum(r.server_errors for r in results)}")
    groups = Counter()
    for r in results:
        for k, v in r.failures.items():
            groups[k] += v
    if groups:
        lines.append("")
        lines.append("distinct server errors (all roles and databases):")
        for k, v in groups.most_common():
            where = sorted({f"{r.database}/{r.role}" for r in results if k in r.failures})
            example = next(r.examples[k] for r in results if k in r.examples)
            lines.append(f"- {v:5d}  {k}  [{', '.join(where)}]  e.g. {example}")
    return "\n".join(lines)


def _fuzz_database(database: str, args: argparse.Namespace, workdir: Path) -> list[RoleResult]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _harness import PhpoServer, fresh_pg_database, pg_available

    with contextlib.ExitStack() as stack:
        url = None
        if database == "postgresql":
            reason = pg_available()
            if reason:
                print(f"PostgreSQL does not answer ({reason}): skipped", file=sys.stderr)
                return []
            url = stack.enter_context(fresh_pg_database("phpo_fuzz"))
            url = url.replace("postgresql://", "postgresql+psycopg://")
        server = stack.enter_context(PhpoServer(workdir / database, url))
        tokens = {
            "user": server.user_token,
            "agent": server.agent_token,
            "admin": server.token("fuzz-admin", "admin"),
        }
        seed(server.url, tokens)
        out = []
        for role in args.roles:
            print(
                f"[{time.strftime('%H:%M:%S')}] {database} / {role}: schemathesis for {args.max_time} s",
                file=sys.stderr,
                flush=True,
            )
            out.append(
                fuzz_role(
                    server.url,
                    tokens[role],
                    role,
                    database,
                    max_time=args.max_time,
                    max_examples=args.max_examples,
                    workers=args.workers,
                    seed_value=args.seed,
                    report_dir=args.report_dir,
                    timeout=args.max_time * 3 + 300,
                )
            )
            print(f"    {out[-1].cases} cases, {out[-1].server_errors} 5xx", file=sys.stderr, flush=True)
        log = server.log_path.read_text(errors="replace")
        tracebacks = log.count("Traceback")
        if tracebacks:
            print(
                f"server log ({database}) holds {tracebacks} tracebacks: {server.log_path}", file=sys.stderr
            )
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", action="append", choices=["sqlite", "postgresql"], help="default: both")
    p.add_argument("--role", dest="roles", action="append", choices=ROLES, help="default: all three")
    p.add_argument("--max-time", type=float, default=60.0, help="seconds of fuzzing per role and database")
    p.add_argument("--max-examples", type=int, default=None, help="schemathesis examples per operation")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--report-dir", type=Path, default=None, help="keep schemathesis' NDJSON reports here")
    p.add_argument("--json", type=Path, default=None, help="write the figures as JSON here")
    p.add_argument(
        "--keep", type=Path, default=None, help="keep the servers' data directories (and logs) here"
    )
    args = p.parse_args(argv)
    args.roles = args.roles or list(ROLES)
    if args.report_dir:
        args.report_dir.mkdir(parents=True, exist_ok=True)
    results: list[RoleResult] = []
    with contextlib.ExitStack() as stack:
        workdir = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="phpo-fuzz-")))
        for database in args.db or ["sqlite", "postgresql"]:
            results += _fuzz_database(database, args, workdir)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=1))
    return 1 if any(r.server_errors or r.no_answer for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
