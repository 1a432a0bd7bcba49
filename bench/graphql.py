"""Benchmark: GraphQL against REST on the same data, and subscription fan-out.

1. Latency: 500 jobs of one user; sequential requests of the whole page as REST gives it
   (`GET /v1/jobs?detail=true`) and as GraphQL gives it (`jobs(first: 500)` with the same fields),
   and of one job (`GET /v1/jobs/<id>` against `job(id)`). Median and p95 in ms, and GraphQL's
   median over REST's (target: at most 1.5).
2. Fan-out: 200 websocket subscribers (graphql-transport-ws) to one job's `jobUpdated`; the job is
   then deleted through /v1, and the figure is the time from that request to the last subscriber
   receiving the DELETED state (and the median subscriber).

Run from the repository root: `.venv/bin/python bench/graphql.py [--backend sqlite|postgresql|both]`.
Prints one JSON line per backend. The exit status is non-zero when a backend failed, an answer did
not hold exactly the stored jobs, or any subscriber missed the update. Both clients are minimal
(raw asyncio HTTP/1.1, the `websockets` package) and share the machine with the server.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import websockets  # noqa: E402

from bench.listing import store_jobs  # noqa: E402
from bench.submit import Connection, _ms, _percentile, build_request, each_backend  # noqa: E402
from tests.live import LiveServer  # noqa: E402

USER = "bench-graphql"
TARGET_RATIO = 1.5
# What `GET /v1/jobs?detail=true` shows of the benchmark's job, asked of GraphQL.
JOB_FIELDS = """id name status statusReason tasks { image runtime cmd } events { createTime startTime endTime }
    resources { nodes cpus memory disk walltime } execution { site retries runtimeVersions { runtime version } }"""
PAGE_QUERY = f"{{ jobs(first: 500) {{ totalCount edges {{ node {{ {JOB_FIELDS} }} }} }} }}"
ONE_QUERY = f"query ($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}"
SUBSCRIPTION = "subscription ($id: ID!) { jobUpdated(id: $id) { id status } }"


def graphql_request(server: LiveServer, token: str, query: str, **variables) -> bytes:
    body = json.dumps({"query": query, "variables": variables}).encode()
    return build_request("POST", "/graphql", f"127.0.0.1:{server.port}", token, body)


def rest_ids(body: bytes) -> list[int]:
    return [job["id"] for job in json.loads(body)]


def graphql_ids(body: bytes) -> list[int]:
    data = json.loads(body)
    if data.get("errors"):
        raise RuntimeError(f"GraphQL errors: {data['errors'][:2]}")
    data = data["data"]
    if "job" in data:
        return [int(data["job"]["id"])]
    return [int(edge["node"]["id"]) for edge in data["jobs"]["edges"]]


async def timed(server: LiveServer, raw: bytes, ids_of, expected: list[int], requests: int) -> dict:
    """Sequential requests; the first answer is parsed and must hold exactly `expected`, every
    later one must be byte-for-byte the same."""
    conn = Connection("127.0.0.1", server.port)
    samples, reference, errors = [], None, 0
    try:
        for n in range(requests + 5):
            started = time.perf_counter()
            status, body = await conn.request(raw)
            took = time.perf_counter() - started
            if reference is None:
                if status != 200 or ids_of(body) != expected:
                    raise RuntimeError(f"HTTP {status}, not the expected jobs: {body[:300]!r}")
                reference = body
            elif status != 200 or body != reference:
                errors += 1
                continue
            if n >= 5:  # the first ones warm caches and the connection pool
                samples.append(took)
    finally:
        conn.close()
    samples.sort()
    return {"median_ms": _ms(_percentile(samples, 50)), "p95_ms": _ms(_percentile(samples, 95)),
            "bytes": len(reference), "errors": errors}


async def fan_out(server: LiveServer, token: str, job_id: int, subscribers: int, timeout: float) -> dict:
    """`subscribers` subscriptions to the job; the job is deleted; when each one heard of it."""
    url = f"ws://127.0.0.1:{server.port}/graphql"
    ready, changed = asyncio.Event(), asyncio.Event()
    subscribed, arrivals, errors = [0], [], []
    deleted_at = [0.0]

    async def subscriber(number: int) -> None:
        async with websockets.connect(url, subprotocols=["graphql-transport-ws"], open_timeout=60) as socket:
            await socket.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"}}))
            if json.loads(await socket.recv())["type"] != "connection_ack":
                raise RuntimeError("no connection_ack")
            await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
                "query": SUBSCRIPTION, "variables": {"id": str(job_id)}}}))
            subscribed[0] += 1
            if subscribed[0] == subscribers:
                ready.set()
            async with asyncio.timeout(timeout):
                while True:
                    message = json.loads(await socket.recv())
                    if message["type"] != "next":
                        raise RuntimeError(f"subscription {number}: {message}")
                    if message["payload"].get("errors"):
                        raise RuntimeError(f"subscription {number}: {message['payload']['errors']}")
                    if message["payload"]["data"]["jobUpdated"]["status"] == "DELETED":
                        await changed.wait()  # (the deletion is sent before any answer can come)
                        arrivals.append(time.perf_counter() - deleted_at[0])
                        return

    async def one(number: int) -> None:
        try:
            await subscriber(number)
        except Exception as error:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(error).__name__}: {error}"[:200])
            ready.set() if len(errors) + subscribed[0] >= subscribers else None

    tasks = [asyncio.create_task(one(n)) for n in range(subscribers)]
    await asyncio.wait_for(ready.wait(), timeout)
    await asyncio.sleep(1.0)  # every subscription registered with the server, its first state sent
    async with httpx.AsyncClient(base_url=server.url) as client:
        deleted_at[0] = time.perf_counter()
        changed.set()
        response = await client.delete(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
    if response.status_code != 200:
        errors.append(f"delete: HTTP {response.status_code} {response.text[:200]}")
    await asyncio.gather(*tasks)
    arrivals.sort()
    return {"subscribers": subscribers, "received": len(arrivals), "last_ms": _ms(arrivals[-1] if arrivals else None),
            "median_ms": _ms(_percentile(arrivals, 50)), "errors": errors[:5], "error_count": len(errors)}


def run_backend(backend: str, database_url: str, root: Path, args: argparse.Namespace) -> dict:
    server = LiveServer(root / "data", database_url).start()
    try:
        token = server.token(USER)
        ids = store_jobs(server, database_url, token, args.jobs)
        one_id = ids[len(ids) // 2]

        async def measure() -> dict:
            host = f"127.0.0.1:{server.port}"
            return {
                "rest_page": await timed(server, build_request("GET", "/v1/jobs?detail=true", host, token),
                                         rest_ids, ids, args.requests),
                "graphql_page": await timed(server, graphql_request(server, token, PAGE_QUERY),
                                            graphql_ids, ids, args.requests),
                "rest_one": await timed(server, build_request("GET", f"/v1/jobs/{one_id}", host, token),
                                        rest_ids, [one_id], args.requests),
                "graphql_one": await timed(server, graphql_request(server, token, ONE_QUERY, id=str(one_id)),
                                           graphql_ids, [one_id], args.requests),
            }
        result: dict = {"benchmark": "graphql", "backend": backend, "jobs": len(ids), "requests": args.requests}
        result.update(asyncio.run(measure()))
        for what in ("page", "one"):
            graphql, rest = result[f"graphql_{what}"]["median_ms"], result[f"rest_{what}"]["median_ms"]
            result[f"{what}_ratio"] = round(graphql / rest, 2)
        result["fan_out"] = asyncio.run(fan_out(server, token, one_id, args.subscribers, args.timeout))
        result["targets_met"] = all(result[f"{what}_ratio"] <= TARGET_RATIO for what in ("page", "one"))
        return result
    finally:
        server.stop()


def work_done(result: dict, args: argparse.Namespace) -> bool:
    """Every answer held exactly the stored jobs and every subscriber heard of the deletion."""
    return (all(result[k]["errors"] == 0 for k in ("rest_page", "graphql_page", "rest_one", "graphql_one"))
            and result["fan_out"]["received"] == args.subscribers and result["fan_out"]["error_count"] == 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=500, help="jobs of the user: the page (500)")
    parser.add_argument("--requests", type=int, default=50, help="timed requests of each kind (50)")
    parser.add_argument("--subscribers", type=int, default=200, help="subscribers to one job (200)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds the fan-out may take (60)")
    args = parser.parse_args()

    return each_backend("graphql", args.backend, lambda backend, url, root: run_backend(backend, url, root, args),
                        lambda result: work_done(result, args))


if __name__ == "__main__":
    sys.exit(main())
