"""Benchmark: do big listings stall the server? 12,000 jobs of one user, 20 concurrent clients
listing them all with `detail=true` again and again, while a probe times `GET /v1/health`.

Run from the repository root: `.venv/bin/python bench/listing.py [--backend sqlite|postgresql|both]`.
Prints one JSON line per backend. The exit status is non-zero when a backend failed, a request
erred, a listing did not hold exactly the stored jobs, or too little work was done to mean anything.

The listers use the cheap asyncio client of bench/submit.py and only compare bytes: the first
listing is parsed and checked (every stored id, in order, with its status and detail fields), and
every later one must be byte-for-byte the same. The probe runs in its own thread with a blocking
socket, so a busy client loop does not delay it.
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from sqlalchemy import insert, select  # noqa: E402

from bench.submit import (JOB_BODY, Connection, _ms, _percentile, build_request, each_backend,  # noqa: E402
                          machine_busy, process_cpu)
from gateway.services.batcher import allocate_ids  # noqa: E402
from schema.db import make_engine  # noqa: E402
from schema.tables import jobs  # noqa: E402
from tests.live import LiveServer  # noqa: E402

USER = "bench-list"
LISTING = "/v1/jobs?detail=true"


def store_jobs(server: LiveServer, database_url: str, token: str, total: int) -> list[int]:
    """One job submitted through the API, then copied `total - 1` times in one bulk insert (every
    column the service sets, whatever the schema is today). Returns all the ids, sorted."""
    response = httpx.post(f"{server.url}/v1/jobs", content=JOB_BODY, timeout=30,
                          headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    response.raise_for_status()
    first = response.json()["id"]
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            template = dict(connection.execute(select(jobs).where(jobs.c.id == first)).mappings().one())
            ids = allocate_ids(connection, total - 1)
            connection.execute(insert(jobs), [dict(template, id=i) for i in ids])
    finally:
        engine.dispose()
    return [first, *ids]


def check_listing(body: bytes, expected_ids: list[int]) -> None:
    listed = json.loads(body)
    if [job["id"] for job in listed] != expected_ids:
        raise RuntimeError(f"the listing returned {len(listed)} jobs, not the {len(expected_ids)} stored ones")
    for job in listed:
        if job["status"] != "idle" or "resources" not in job or "execution" not in job:
            raise RuntimeError(f"job {job['id']} is not listed with its status and detail: {job}")


def probe_health(port: int, stop: threading.Event, samples: list[float], errors: list[str],
                 interval: float) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while not stop.is_set():
        started = time.perf_counter()
        try:
            connection.request("GET", "/v1/health")
            response = connection.getresponse()
            response.read()
            if response.status != 204:
                errors.append(f"health HTTP {response.status}")
            else:
                samples.append(time.perf_counter() - started)
        except (OSError, http.client.HTTPException) as error:
            errors.append(f"health {type(error).__name__}")
            connection.close()
        stop.wait(interval)
    connection.close()


def health_figures(samples: list[float]) -> dict:
    samples = sorted(samples)
    return {"median_ms": _ms(_percentile(samples, 50)), "p95_ms": _ms(_percentile(samples, 95)),
            "max_ms": _ms(samples[-1] if samples else None), "probes": len(samples)}


async def list_load(server: LiveServer, token: str, reference: bytes, clients: int, duration: float,
                    errors: list[str]) -> dict:
    raw = build_request("GET", LISTING, f"127.0.0.1:{server.port}", token)
    done: list[int] = [0] * clients
    latencies: list[float] = []
    deadline = time.perf_counter() + duration

    async def client(number: int) -> None:
        conn = Connection("127.0.0.1", server.port)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                status, body = await conn.request(raw)
            except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as error:
                conn.close()
                errors.append(f"list {type(error).__name__}")
                await asyncio.sleep(0.05)
                continue
            if status != 200:
                errors.append(f"list HTTP {status}")
            elif body != reference:
                errors.append("list returned other content than the checked first listing")
            else:
                done[number] += 1
                latencies.append(time.perf_counter() - started)
        conn.close()

    await asyncio.gather(*(client(n) for n in range(clients)))
    latencies.sort()
    return {"listings": sum(done), "clients_that_listed": sum(1 for n in done if n),
            "list_median_ms": _ms(_percentile(latencies, 50)), "list_p95_ms": _ms(_percentile(latencies, 95))}


def run_backend(backend: str, database_url: str, root: Path, args: argparse.Namespace) -> dict:
    server = LiveServer(root / "data", database_url).start()
    try:
        token = server.token(USER)
        ids = store_jobs(server, database_url, token, args.jobs)
        first = httpx.get(f"{server.url}{LISTING}", headers={"Authorization": f"Bearer {token}"}, timeout=120)
        first.raise_for_status()
        check_listing(first.content, ids)

        idle_samples: list[float] = []
        errors: list[str] = []
        stop = threading.Event()
        probe = threading.Thread(target=probe_health, args=(server.port, stop, idle_samples, errors, 0.02))
        probe.start()
        time.sleep(1)  # health latency with no other load, for comparison
        stop.set()
        probe.join()

        samples: list[float] = []
        stop = threading.Event()
        probe = threading.Thread(target=probe_health, args=(server.port, stop, samples, errors, args.interval))
        cpu0, busy0, server0 = time.process_time(), machine_busy(), process_cpu(server.process.pid)
        started = time.perf_counter()
        probe.start()
        figures = asyncio.run(list_load(server, token, first.content, args.clients, args.duration, errors))
        stop.set()
        probe.join()
        elapsed = time.perf_counter() - started
        cpu1, busy1, server1 = time.process_time(), machine_busy(), process_cpu(server.process.pid)
        return {
            "benchmark": "listing", "backend": backend, "jobs": len(ids), "clients": args.clients,
            "listing_bytes": len(first.content), **figures,
            "listings_per_s": round(figures["listings"] / elapsed, 2), "duration_s": round(elapsed, 2),
            "health_under_load": health_figures(samples), "health_idle": health_figures(idle_samples),
            "errors": len(errors), "error_kinds": {kind: errors.count(kind) for kind in set(errors)},
            "client_cpu": round((cpu1 - cpu0) / elapsed, 2), "server_cpu": round((server1 - server0) / elapsed, 2),
            "machine_cpu": round((busy1 - busy0) / elapsed, 2),
        }
    finally:
        server.stop()


def work_done(result: dict, args: argparse.Namespace) -> bool:
    """Every client listed (the checked content) and the probe got answers, without errors. How
    long the probe waited is the figure measured, not a condition."""
    return (result["errors"] == 0 and result["clients_that_listed"] == args.clients
            and result["listings"] >= 2 * args.clients and result["health_under_load"]["probes"] >= 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=12_000, help="jobs stored for the one user (12000)")
    parser.add_argument("--clients", type=int, default=20, help="concurrent listing clients (20)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of listing (10)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between health probes (0.05)")
    args = parser.parse_args()

    return each_backend("listing", args.backend, lambda backend, url, root: run_backend(backend, url, root, args),
                        lambda result: work_done(result, args))


if __name__ == "__main__":
    sys.exit(main())
