"""Lead archive throughput of the lab: 100,000 leads archived 500 per request over HTTP.

For each backend (SQLite file, MariaDB) the benchmark starts a lab with an
empty lead table, bulk-inserts N generated leads (``softphone.lab.seed.make_lead``)
straight into ``vicidial_list``, then archives them all (insert + update +
delete) through the REST API with ``softphone.platform``'s client, and prints
leads per second and request latency percentiles.  It checks at the end that
every lead is in the archive and none is left in ``vicidial_list``.

MariaDB: a private ``mariadbd`` is started in a temporary directory by the
test suite's peer code (``tests/peers/mariadb.py``, stopped by PID) unless ``--mysql-url mysql://USER:PASS@HOST:PORT/DB`` names a
server whose user may create databases.

    python bench/archive.py                 # both backends, 100,000 leads
    python bench/archive.py --leads 20000 --backend sqlite --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # tests/peers: the suite's mariadbd

from softphone.lab.db import Database, Tx
from softphone.lab.seed import INSERT_LEAD_SQL, Seed, lead_row, load_seed, make_lead
from softphone.lab.server import start_lab
from softphone.lab.testing import drop_mysql_database, fresh_mysql_url, table_snapshot
from softphone.platform.client import PlatformClient

BATCH = 500
INSERT_CHUNK = 5000


def empty_seed() -> Seed:
    seed = load_seed()
    seed.leads = []
    return seed


async def bulk_insert(db: Database, count: int) -> float:
    """Insert leads 1..count; seconds taken."""
    t0 = time.perf_counter()
    for start in range(1, count + 1, INSERT_CHUNK):
        rows = [lead_row(make_lead(i)) for i in range(start, min(start + INSERT_CHUNK, count + 1))]

        async def run(tx: Tx, rows=rows) -> None:
            await tx.executemany(INSERT_LEAD_SQL, rows)

        await db.run_transaction(run)
    return time.perf_counter() - t0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def run_backend(name: str, db_url: str, count: int, concurrency: int) -> dict:
    async with await start_lab(db_url=db_url, seed=empty_seed()) as lab:
        insert_s = await bulk_insert(lab.db, count)
        print(f"[{name}] inserted {count} leads in {insert_s:.1f}s ({count / insert_s:,.0f} rows/s)", flush=True)
        batches = [list(range(s, min(s + BATCH, count + 1))) for s in range(1, count + 1, BATCH)]
        latencies: list[float] = []
        totals = {"insert": 0, "update": 0, "delete": 0}
        queue: asyncio.Queue[list[int]] = asyncio.Queue()
        for b in batches:
            queue.put_nowait(b)
        done = 0

        async with PlatformClient(lab.url, "lab-system-key", retries=0, timeout=120) as client:
            async def worker() -> None:
                nonlocal done
                while not queue.empty():
                    ids = queue.get_nowait()
                    t = time.perf_counter()
                    result = await client.archive_leads(ids)
                    latencies.append(time.perf_counter() - t)
                    totals["insert"] += result.insert_count
                    totals["update"] += result.update_count
                    totals["delete"] += result.delete_count
                    done += 1
                    if done % 40 == 0:
                        print(f"[{name}] {done}/{len(batches)} batches", flush=True)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - t0
        snap = await table_snapshot(lab.db)
        intact = not snap["vicidial_list"] and len(snap["vicidial_list_archive"]) == count
    return {
        "backend": name, "leads": count, "requests": len(batches), "seconds": elapsed,
        "leads_per_s": count / elapsed, "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * percentile(latencies, 95), "max_ms": 1000 * max(latencies),
        "inserted": totals["insert"], "deleted": totals["delete"], "all_archived": intact,
    }


def print_table(results: list[dict]) -> None:
    cols = ["backend", "leads", "requests", "seconds", "leads_per_s", "p50_ms", "p95_ms", "max_ms",
            "inserted", "deleted", "all_archived"]
    print()
    print(" | ".join(f"{c:>12}" for c in cols))
    for r in results:
        cells = []
        for c in cols:
            v = r[c]
            cells.append(f"{v:>12.1f}" if isinstance(v, float) else f"{v!s:>12}")
        print(" | ".join(cells))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--backend", choices=["sqlite", "mariadb", "both"], default="both")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    parser.add_argument("--mysql-url", help="an existing MariaDB server (default: start a private one)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-archive-") as tmp:
        if args.backend in ("sqlite", "both"):
            results.append(await run_backend("sqlite", f"sqlite:///{tmp}/bench.db", args.leads, args.concurrency))
        if args.backend in ("mariadb", "both"):
            server = None
            if args.mysql_url:
                url = fresh_mysql_url(args.mysql_url)
            else:
                from peers.mariadb import MariaDB

                server = MariaDB(Path(tmp) / "mariadb")
                server.start()
                print(f"[mariadb] private mariadbd pid {server.pid} on port {server.port}", flush=True)
                url = server.create_database("bench_archive")
            try:
                results.append(await run_backend("mariadb", url, args.leads, args.concurrency))
            finally:
                drop_mysql_database(url)
                if server is not None:
                    server.stop()
    print_table(results)


if __name__ == "__main__":
    asyncio.run(main())
