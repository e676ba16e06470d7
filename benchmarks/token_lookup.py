"""What a token lookup costs, now that the server looks every request's token up (no cache).

Revocation must count from a token's very next request, on every server replica sharing the
database; a per-process cache cannot be invalidated from another process, so the server reads
the token row on each request (one indexed ``SELECT`` by SHA-256 hash). This measures that read
exactly as ``current_caller`` does it (a session from the pool, ``lookup``), on SQLite and on
PostgreSQL, and, for scale, a whole authenticated round trip (``GET /api/v1/me``) to a real
server process.

    .venv/bin/python benchmarks/token_lookup.py [--n 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import PhpoServer, fresh_pg_database, log, machine, pg_available, save_result  # noqa: E402


def _pcts(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "p50_us": round(statistics.median(xs) * 1e6, 1),
        "p99_us": round(xs[int(len(xs) * 0.99)] * 1e6, 1),
    }


def lookup_cost(url: str, n: int) -> dict[str, float]:
    from phpo.server.db.engine import Database
    from phpo.server.repositories.tokens import create_token, lookup

    db = Database(url)
    try:
        db.migrate()
        with db.write() as s:
            token, _ = create_token(s, "bench-agent", "agent", ["SITE_A"])
        for _ in range(50):  # warm the pool
            with db.read() as s:
                lookup(s, token)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            with db.read() as s:
                assert lookup(s, token) is not None
            times.append(time.perf_counter() - t0)
        return _pcts(times)
    finally:
        db.dispose()


def me_round_trip(data_dir: Path, url: str | None, n: int) -> dict[str, float]:
    import httpx

    with (
        PhpoServer(data_dir, url) as srv,
        httpx.Client(
            base_url=srv.url + "/api/v1", timeout=30, headers={"Authorization": f"Bearer {srv.agent_token}"}
        ) as c,
    ):
        for _ in range(20):
            c.get("/me")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            assert c.get("/me").status_code == 200
            times.append(time.perf_counter() - t0)
        return _pcts(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="lookups per database (default 2000)")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="phpo-bench-tokens-") as tmp:
        dbs: list[tuple[str, str | None]] = [("sqlite", None)]
        if pg_available() is None:
            dbs.append(("postgresql", "pg"))
        else:
            log("PostgreSQL does not answer: SQLite only")
        for name, kind in dbs:
            if kind is None:
                url = f"sqlite:///{tmp}/lookup.db"
                row = {
                    "database": name,
                    "lookup": lookup_cost(url, args.n),
                    "me": me_round_trip(Path(tmp) / "srv-sqlite", None, args.n // 4),
                }
            else:
                with fresh_pg_database("phpo_bench_tokens") as pg:
                    row = {"database": name, "lookup": lookup_cost(pg, args.n)}
                with fresh_pg_database("phpo_bench_tokens") as pg:
                    row["me"] = me_round_trip(Path(tmp) / "srv-pg", pg, args.n // 4)
            rows.append(row)
            log(f"{name}: lookup {row['lookup']}, GET /me {row['me']}")
    print("| database | token lookup p50 | p99 | GET /me round trip p50 | p99 |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['database']} | {r['lookup']['p50_us']} µs | {r['lookup']['p99_us']} µs | "
            f"{r['me']['p50_us']} µs | {r['me']['p99_us']} µs |"
        )
    save_result("token_lookup", {"machine": machine(), "n": args.n, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
