"""Benchmark: job submissions per second through POST /v1/jobs, and GET /v1/jobs latency with
100,000 stored jobs, against a real `prominence-server serve` on SQLite and on PostgreSQL.

Run from the repository root: `.venv/bin/python bench/submit.py` (what `make bench` runs).
Prints one JSON line per backend with its figures and the machine it ran on.

The load generator runs on the same machine as the server, so it is deliberately cheap: a
minimal HTTP/1.1 keep-alive client over raw asyncio streams (uvloop when installed), one request
in flight per connection. The JSON line reports how much CPU it used (`client_cpu`), so a reader
can tell whether the client or the server was the limit.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402
from sqlalchemy import insert, select, text  # noqa: E402

from gateway.services.batcher import allocate_ids  # noqa: E402
from schema.db import make_engine  # noqa: E402
from schema.enums import JobStatus  # noqa: E402
from schema.tables import jobs  # noqa: E402
from tests.live import LiveServer  # noqa: E402
from tests.services import create_database, postgres_server  # noqa: E402

# What `prominence create --cpus 1 --memory 1 busybox 'echo hi'` sends.
JOB_BODY = json.dumps({"resources": {"nodes": 1, "disk": 10, "cpus": 1, "memory": 1}, "name": "",
                       "tasks": [{"image": "busybox", "runtime": "singularity", "cmd": "echo hi"}]},
                      separators=(",", ":")).encode()
SUBMITTER, LISTER = "bench-submit", "bench-list"
TARGETS = {"submissions_per_s": 2000, "list_median_ms": 20}


# --- a minimal HTTP/1.1 keep-alive client ---------------------------------------------------

class Connection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one prepared request; returns (status, body). Reconnects when the server closed."""
        if self.writer is None:
            await self.open()
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if status in (204, 304):
            return status, b""
        if at < 0:  # every response of this API has a Content-Length; anything else is an error
            self.close()
            raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
        end = lower.index(b"\r\n", at + 17)
        body = await self.reader.readexactly(int(lower[at + 17:end]))
        if b"\r\nconnection: close" in lower:
            self.close()
        return status, body


def build_request(method: str, path: str, host: str, token: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {token}",
             "Accept: application/json"]
    if method in ("POST", "PUT"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --- CPU accounting (to show who is busy) -------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def machine_busy() -> float:
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / _TICK


# --- phase 1: submissions per second -------------------------------------------------------------

async def submit_load(server: LiveServer, token: str, connections: int, warmup: float, duration: float) -> dict:
    host = f"127.0.0.1:{server.port}"
    raw = build_request("POST", "/v1/jobs", host, token, JOB_BODY)
    state = {"measuring": False, "stop": False}
    ok = {"warmup": 0, "measured": 0, "after": 0}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    acknowledged: list[int] = []  # the ids of every 201, compared with the database's afterwards

    async def worker() -> None:
        conn = Connection("127.0.0.1", server.port)
        while not state["stop"]:
            started = time.perf_counter()
            try:
                status, body = await conn.request(raw)
            except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError) as error:
                conn.close()
                key = type(error).__name__
                errors[key] = errors.get(key, 0) + 1
                await asyncio.sleep(0.01)
                continue
            phase = "measured" if state["measuring"] else ("after" if state["stop"] else "warmup")
            if status == 201:
                took = time.perf_counter() - started
                try:
                    acknowledged.append(json.loads(body)["id"])
                except (ValueError, KeyError, TypeError):
                    errors["201 without an id"] = errors.get("201 without an id", 0) + 1
                    continue
                ok[phase] += 1
                if phase == "measured":
                    latencies.append(took)
            else:
                key = f"HTTP {status}"
                errors[key] = errors.get(key, 0) + 1
                if len(errors) == 1 and errors[key] == 1:
                    print(f"bench: first error: {key} {body[:200]!r}", file=sys.stderr)
        conn.close()

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.sleep(warmup)
    cpu0, busy0, server0 = time.process_time(), machine_busy(), process_cpu(server.process.pid)
    start = time.perf_counter()
    state["measuring"] = True
    await asyncio.sleep(duration)
    state["measuring"] = False
    elapsed = time.perf_counter() - start
    cpu1, busy1, server1 = time.process_time(), machine_busy(), process_cpu(server.process.pid)
    state["stop"] = True
    await asyncio.gather(*tasks)
    latencies.sort()
    return {
        "acknowledged_ids": acknowledged,
        "submissions_per_s": round(ok["measured"] / elapsed, 1),
        "submissions_measured": ok["measured"],
        "submissions_total": sum(ok.values()),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "submit_median_ms": _ms(_percentile(latencies, 50)),
        "submit_p99_ms": _ms(_percentile(latencies, 99)),
        "connections": connections,
        "duration_s": round(elapsed, 2),
        # CPU seconds per wall second (1.0 = one core busy) during the measured window.
        "client_cpu": round((cpu1 - cpu0) / elapsed, 2),
        "server_cpu": round((server1 - server0) / elapsed, 2),
        "machine_cpu": round((busy1 - busy0) / elapsed, 2),
    }


# --- phase 2: listing latency with 100,000 stored jobs --------------------------------------------

def store_jobs(database_url: str, total: int, active: int) -> tuple[list[int], int]:
    """`total` jobs of LISTER in one bulk Core insert: `active` idle ones, the rest completed.

    Each row is a copy of a job that phase 1 submitted through the API (so it has every column
    the service sets, whatever the schema is today), with its own id, owner, status and times.
    Returns the ids of the active jobs and the id of the most recently finished one.
    """
    engine = make_engine(database_url)
    now = int(time.time())
    try:
        with engine.begin() as connection:
            template = dict(connection.execute(
                select(jobs).where(jobs.c.owner == SUBMITTER).order_by(jobs.c.id).limit(1)).mappings().one())
            ids = allocate_ids(connection, total)
            rows = []
            for n, job_id in enumerate(ids):
                row = dict(template, id=job_id, owner=LISTER, create_time=now - 86400 + n // 2)
                if n < total - active:
                    row.update(status=JobStatus.COMPLETED, status_reason="", in_queue=False,
                               start_time=row["create_time"] + 1, end_time=row["create_time"] + 5,
                               execution={"tasks": [{"exitCode": 0, "retries": 0}]})
                rows.append(row)
            connection.execute(insert(jobs), rows)
        if engine.dialect.name == "postgresql":
            # What autovacuum does soon after a bulk load; without it the planner has no statistics.
            with engine.begin() as connection:
                connection.execute(text("ANALYZE jobs"))
        last_finished = max(rows[:total - active], key=lambda row: (row["end_time"], row["id"]))["id"]
        return list(ids)[total - active:], last_finished
    finally:
        engine.dispose()


def stored_ids(database_url: str, owner: str) -> list[int]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(select(jobs.c.id).where(jobs.c.owner == owner)).scalars())
    finally:
        engine.dispose()


def listed(body: bytes) -> list[tuple[int, str]]:
    """The (id, status) of each job in a listing, in its order."""
    try:
        return [(job["id"], job["status"]) for job in json.loads(body)]
    except (ValueError, KeyError, TypeError):
        return []


async def latency(server: LiveServer, token: str, path: str, requests: int, expected: list[tuple[int, str]]) -> dict:
    """Sequential GETs of `path`; every answer must list exactly the `expected` (id, status) pairs."""
    raw = build_request("GET", path, f"127.0.0.1:{server.port}", token)
    conn = Connection("127.0.0.1", server.port)
    samples, errors = [], 0
    for n in range(requests + 10):
        started = time.perf_counter()
        status, body = await conn.request(raw)
        took = time.perf_counter() - started
        if status != 200 or listed(body) != expected:
            if errors == 0:
                print(f"bench: GET {path}: HTTP {status}, not the expected jobs: {body[:200]!r}", file=sys.stderr)
            errors += 1
            continue
        if n >= 10:  # the first ones warm the server's caches and connection pool
            samples.append(took)
    conn.close()
    samples.sort()
    return {"median_ms": _ms(_percentile(samples, 50)), "p95_ms": _ms(_percentile(samples, 95)), "errors": errors}


# --- driver ------------------------------------------------------------------------------------

def _percentile(sorted_values: list[float], pct: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    with open("/proc/meminfo") as handle:
        mem_kb = int(handle.readline().split()[1])
    return {"nproc": nproc, "cpu_model": model, "mem_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "kernel": platform.release()}


def run_backend(backend: str, database_url: str, root: Path, args: argparse.Namespace) -> dict:
    server = LiveServer(root / "data", database_url).start()
    try:
        submit_token, list_token = server.token(SUBMITTER), server.token(LISTER)
        # LiveServer runs `serve --no-provisioner`: the gateway alone, as in a split deployment.
        result: dict = {"benchmark": "submit", "backend": backend, "provisioner": False}
        result.update(asyncio.run(submit_load(server, submit_token, args.connections, args.warmup, args.duration)))
        # Every acknowledged job is stored, once, and nothing else is: the ids, not just the counts.
        acknowledged, stored = result.pop("acknowledged_ids"), stored_ids(database_url, SUBMITTER)
        result["stored_matches_201s"] = len(acknowledged) == len(set(acknowledged)) and set(acknowledged) == set(stored)
        result["acknowledged_not_stored"] = len(set(acknowledged) - set(stored))
        result["stored_not_acknowledged"] = len(set(stored) - set(acknowledged))

        loaded = time.perf_counter()
        active_ids, last_finished = store_jobs(database_url, args.jobs, args.active)
        result["bulk_insert_s"] = round(time.perf_counter() - loaded, 2)
        result["stored_jobs"] = args.jobs + len(stored)

        async def measure() -> dict:
            out = {}
            one_id = active_ids[len(active_ids) // 2]
            active = await latency(server, list_token, "/v1/jobs?num=1", args.requests,
                                   expected=[(job_id, "idle") for job_id in active_ids])
            done = await latency(server, list_token, "/v1/jobs?completed=true&num=1", args.requests,
                                 expected=[(last_finished, "completed")])
            one = await latency(server, list_token, f"/v1/jobs/{one_id}", args.requests, expected=[(one_id, "idle")])
            for name, figures in (("list", active), ("list_completed", done), ("get", one)):
                out[f"{name}_median_ms"] = figures["median_ms"]
                out[f"{name}_p95_ms"] = figures["p95_ms"]
                out["errors"] = out.get("errors", 0) + figures["errors"]
            return out

        figures = asyncio.run(measure())
        result["errors"] += figures.pop("errors")
        result.update(figures)
        result["list_requests"] = args.requests
        result["targets_met"] = (result["submissions_per_s"] >= TARGETS["submissions_per_s"]
                                 and result["list_median_ms"] is not None
                                 and result["list_median_ms"] < TARGETS["list_median_ms"])
        return result
    finally:
        server.stop()


@contextlib.contextmanager
def database(backend: str, root: Path, name: str) -> Iterator[str]:
    """The URL of a new database of `backend`: SQLite in `root`, or a private PostgreSQL cluster."""
    if backend == "sqlite":
        yield f"sqlite:///{root / 'state.db'}"
        return
    with postgres_server() as base:
        yield create_database(base, name)


def each_backend(benchmark: str, choice: str, run: Callable[[str, str, Path], dict],
                 work_done: Callable[[dict], bool]) -> int:
    """`run(backend, database_url, root)` on SQLite and/or PostgreSQL (`choice`: sqlite,
    postgresql or both), each result printed as one JSON line with the machine; a backend that
    fails is reported and the next one still runs. The exit status: 1 when any backend failed or
    did not do the work it timed."""
    failed = False
    for backend in ["sqlite", "postgresql"] if choice == "both" else [choice]:
        with tempfile.TemporaryDirectory(prefix=f"bench-{benchmark}-{backend}-") as tmp:
            root = Path(tmp)
            try:
                with database(backend, root, f"bench_{benchmark}") as url:
                    result = run(backend, url, root)
            except Exception as error:  # report and go on with the other backend
                result = {"benchmark": benchmark, "backend": backend, "error": f"{type(error).__name__}: {error}"}
                for log in root.glob("server-*.log"):
                    print(log.read_text()[-3000:], file=sys.stderr)
        result["work_done"] = "error" not in result and work_done(result)
        result["machine"] = machine()
        print(json.dumps(result), flush=True)
        failed = failed or not result["work_done"]
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--connections", type=int, default=64, help="concurrent keep-alive clients (64)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (2)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (10)")
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs stored for the listing test (100000)")
    parser.add_argument("--active", type=int, default=100, help="of which active (100)")
    parser.add_argument("--requests", type=int, default=200, help="sequential GETs per listing figure (200)")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"

    failed = False
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix=f"bench-{backend}-") as tmp:
            root = Path(tmp)
            try:
                with database(backend, root, "bench_submit") as url:
                    result = run_backend(backend, url, root, args)
                    if backend == "postgresql":
                        with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as pg:
                            result["postgresql"] = pg.execute("SHOW server_version").fetchone()[0]
            except Exception as error:  # report and go on with the other backend
                failed = True
                result = {"benchmark": "submit", "backend": backend, "error": f"{type(error).__name__}: {error}"}
                for log in root.glob("server-*.log"):
                    print(log.read_text()[-3000:], file=sys.stderr)
        result["client_loop"] = loop_name
        result["targets"] = TARGETS
        result["machine"] = machine()
        print(json.dumps(result), flush=True)
        failed = failed or bool(result.get("errors")) or not result.get("stored_matches_201s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
