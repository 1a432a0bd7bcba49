"""Benchmark: how fast a submitted job reaches a node and runs there, and what the agent adds to
each container it runs, against a real `prominence-server serve` with its provisioner (SQLite).

Run from the repository root: `.venv/bin/python bench/dispatch.py`. Prints one JSON line per
measurement set (`overhead`, `dispatch`, `saturation`) with its figures and the machine.

One local node with 2 cpus (`--local-cpus 2`, long idle timeout) is created by a warm-up job and
then kept; every job runs `true` in the local busybox image (tests/images.py; nothing is pulled).
Client, server and agent share the machine, so the epoch times the client records (POST sent) and
the agent records (`execution.claimedAt`, `execution.tasks[].containerStartedAt`) are comparable.
See bench/README.md for what each figure includes.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.submit import Connection, build_request, machine, machine_busy, process_cpu  # noqa: E402
from tests.images import busybox_image, podman_env  # noqa: E402
from tests.live import LiveServer  # noqa: E402

TARGETS = {"claim_median_ms": 50, "overhead_per_task_ms": 100}
USER = "bench-dispatch"
TERMINAL = ("completed", "failed", "killed", "deleted")
CHUNK = 200  # ids per GET /v1/jobs?id=...
IDLE_CLOSE = 2.0  # seconds after which the client reconnects instead of reusing a connection


def job_body(image: str, tasks: int = 1, cpus: int = 1, memory: float = 0.25, disk: int = 1) -> bytes:
    return json.dumps({"resources": {"cpus": cpus, "memory": memory, "disk": disk},
                       "tasks": [{"image": image, "cmd": "true"}] * tasks},
                      separators=(",", ":")).encode()


# --- statistics ----------------------------------------------------------------------------

def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (as bench/submit.py)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def summary(name: str, seconds: list[float]) -> dict:
    return {f"{name}_median_ms": ms(pct(seconds, 50)), f"{name}_p95_ms": ms(pct(seconds, 95))}


# --- CPU accounting ------------------------------------------------------------------------

def tree_cpu(pid: int | None) -> float:
    """CPU seconds of a process plus its waited-for children (the agent's podman CLI calls)."""
    if not pid:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / _TICK


_TICK = os.sysconf("SC_CLK_TCK")


class CpuWindow:
    """Cores used (1.0 = one core busy) by the client, the server, the agent and the machine."""

    def __init__(self, server: LiveServer, agent_pid: int | None):
        self.server, self.agent_pid = server, agent_pid

    def __enter__(self) -> CpuWindow:
        self.t0 = time.perf_counter()
        self.c0, self.s0 = time.process_time(), process_cpu(self.server.process.pid)
        self.a0, self.m0 = tree_cpu(self.agent_pid), machine_busy()
        return self

    def __exit__(self, *exc) -> None:
        elapsed = time.perf_counter() - self.t0
        self.figures = {
            "client_cpu": round((time.process_time() - self.c0) / elapsed, 2),
            "server_cpu": round((process_cpu(self.server.process.pid) - self.s0) / elapsed, 2),
            "agent_cpu": round((tree_cpu(self.agent_pid) - self.a0) / elapsed, 2),
            "machine_cpu": round((machine_busy() - self.m0) / elapsed, 2),
        }


# --- talking to the server -----------------------------------------------------------------

class Client:
    def __init__(self, server: LiveServer, token: str, connections: int = 4):
        self.host = f"127.0.0.1:{server.port}"
        self.port = server.port
        self.token = token
        self.pool: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(connections):
            self.pool.put_nowait(Connection("127.0.0.1", server.port))

    async def _connection(self) -> Connection:
        conn = await self.pool.get()
        if conn.writer is not None and time.monotonic() - getattr(conn, "used", 0) > IDLE_CLOSE:
            conn.close()  # the server may be closing it (uvicorn's keep-alive timeout is 5 s)
        if conn.writer is None:
            await conn.open()
        return conn

    def _release(self, conn: Connection) -> None:
        conn.used = time.monotonic()
        self.pool.put_nowait(conn)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        raw = build_request(method, path, self.host, self.token, body)
        conn = await self._connection()
        try:
            return await conn.request(raw)
        except BaseException:
            conn.close()
            raise
        finally:
            self._release(conn)

    async def submit(self, body: bytes) -> tuple[int, float]:
        """POST one job; returns (id, epoch seconds just before the request was written)."""
        raw = build_request("POST", "/v1/jobs", self.host, self.token, body)
        conn = await self._connection()
        try:
            sent = time.time()
            status, answer = await conn.request(raw)
        except BaseException:
            conn.close()
            raise
        finally:
            self._release(conn)
        if status != 201:
            raise RuntimeError(f"POST /v1/jobs: HTTP {status} {answer[:200]!r}")
        return json.loads(answer)["id"], sent

    async def jobs(self, ids: list[int], detail: bool = True) -> list[dict]:
        found = []
        for start in range(0, len(ids), CHUNK):
            path = f"/v1/jobs?id={','.join(map(str, ids[start:start + CHUNK]))}" + ("&detail=true" if detail else "")
            status, body = await self.request("GET", path)
            if status != 200:
                raise RuntimeError(f"GET /v1/jobs: HTTP {status} {body[:200]!r}")
            found += json.loads(body)
        return found

    async def wait(self, ids: list[int], timeout: float, interval: float = 0.1,
                   seen: dict[int, float] | None = None) -> dict[int, dict]:
        """Poll the ids not yet terminal until all are; `seen[id]` = send time of the first poll
        that found the job terminal. Returns the jobs (with detail)."""
        seen = {} if seen is None else seen
        done: dict[int, dict] = {}
        deadline = time.monotonic() + timeout
        while len(done) < len(ids):
            if time.monotonic() > deadline:
                waiting = [i for i in ids if i not in done]
                raise RuntimeError(f"{len(waiting)} jobs not finished after {timeout} s, e.g. {waiting[:5]}")
            polled = time.time()
            for job in await self.jobs([i for i in ids if i not in done]):
                if job["status"] in TERMINAL:
                    done[job["id"]] = job
                    seen.setdefault(job["id"], polled)
            await asyncio.sleep(interval)
        return done


def check_completed(jobs: dict[int, dict]) -> dict:
    """How many finished as they should (completed, every task exit code 0)."""
    bad = [j for j in jobs.values() if j["status"] != "completed"
           or any(t.get("exitCode") != 0 for t in j.get("execution", {}).get("tasks", []))]
    if bad:
        print(f"bench: {len(bad)} jobs did not complete cleanly, e.g. {json.dumps(bad[0])[:600]}", file=sys.stderr)
    return {"jobs": len(jobs), "not_completed_ok": len(bad)}


# --- setup ---------------------------------------------------------------------------------

async def warm_up(client: Client, image: str) -> dict:
    """One job as big as the local cloud (2 cpus): its node is the only one there can be."""
    started = time.monotonic()
    job_id, _ = await client.submit(job_body(image, cpus=2, memory=1, disk=2))
    job = (await client.wait([job_id], timeout=900, interval=0.5))[job_id]
    if job["status"] != "completed":
        raise RuntimeError(f"warm-up job did not complete: {json.dumps(job)[:1000]}")
    return {"node_ready_s": round(time.monotonic() - started, 1),
            "node": job["execution"].get("provisionedResources")}


def agent_pid(data_dir: Path) -> int | None:
    pids = [int(p.read_text()) for p in (data_dir / "nodes").glob("*/agent.pid")]
    return pids[0] if len(pids) == 1 else None


def destroy_nodes(data_dir: Path) -> None:
    """The server leaves its local nodes running when it stops: stop their agents and containers."""
    from provisioner.drivers.local import LocalNodeDriver

    driver = LocalNodeDriver(base_dir=data_dir / "nodes")
    for node in driver.list_nodes():
        driver.destroy_node(node)


# --- set 1: agent overhead per task ----------------------------------------------------------

def bare_runs(image: str, runs: int) -> list[float]:
    """Seconds for each of `runs` sequential `podman run --network none IMAGE true`: a container
    with no network and no other option. As with the agent, whose removals run in the background
    while the next task starts, the container's removal is not in the time: it follows, untimed."""
    env, took = podman_env(), []
    for number in range(runs):
        name = f"bench-dispatch-bare-{os.getpid()}-{number}"
        started = time.perf_counter()
        subprocess.run(["podman", "run", "--name", name, "--network", "none", image, "true"], env=env, check=True,
                       stdin=subprocess.DEVNULL, capture_output=True)
        took.append(time.perf_counter() - started)
        subprocess.run(["podman", "rm", "--force", name], env=env, check=True, stdin=subprocess.DEVNULL,
                       capture_output=True)
    return took


def podman_calls(image: str, runs: int) -> dict[str, float]:
    """Median ms of each podman CLI call the agent makes per task besides `podman run`: the image
    check (`image exists`, `image inspect`) and, after the container exits, `container inspect`
    and `rm`."""
    env, name = podman_env(), f"bench-dispatch-probe-{os.getpid()}"
    took: dict[str, list[float]] = {"image_exists": [], "image_inspect": [], "container_inspect": [],
                                    "container_rm": []}
    calls = {"image_exists": ["image", "exists", image],
             "image_inspect": ["image", "inspect", "--format", "json", image],
             "container_inspect": ["container", "inspect", "--format", "json", name],
             "container_rm": ["rm", "--force", "--ignore", "--time", "0", name]}
    for _ in range(runs):
        subprocess.run(["podman", "run", "--name", name, "--network", "none", image, "true"], env=env,
                       check=True, capture_output=True, stdin=subprocess.DEVNULL)
        for key, args in calls.items():
            started = time.perf_counter()
            subprocess.run(["podman", *args], env=env, capture_output=True, stdin=subprocess.DEVNULL, check=False)
            took[key].append(time.perf_counter() - started)
    return {key: ms(statistics.median(values)) for key, values in took.items()}


def cycles(starts: list[float]) -> list[float]:
    starts = sorted(starts)
    return [b - a for a, b in itertools.pairwise(starts)]


async def overhead(client: Client, server: LiveServer, image: str, runs: int, agent: int | None) -> dict:
    loop = asyncio.get_running_loop()
    result: dict = {"benchmark": "dispatch", "set": "overhead", "runs": runs}

    # a) bare: the node's podman setup (same containers.conf), no agent, no service; half of the
    #    runs before the service's, half after, so a drift in the machine's load hits both alike.
    await loop.run_in_executor(None, bare_runs, image, 3)  # warm podman's caches
    with CpuWindow(server, agent) as cpu_before:
        bare = await loop.run_in_executor(None, bare_runs, image, runs - runs // 2)

    # b) one job with `runs` tasks: the agent's cycle from one `podman run` to the next.
    with CpuWindow(server, agent) as cpu_job:
        job_id, _ = await client.submit(job_body(image, tasks=runs, cpus=1))
        job = (await client.wait([job_id], timeout=600))[job_id]
    with CpuWindow(server, agent) as cpu_after:
        bare += await loop.run_in_executor(None, bare_runs, image, runs // 2)
    bare_s = statistics.median(bare)
    result.update(summary("bare_run", bare))
    result["bare_machine_cpu"] = round((cpu_before.figures["machine_cpu"] + cpu_after.figures["machine_cpu"]) / 2, 2)
    tasks = job["execution"]["tasks"]
    task_cycle = cycles([t["containerStartedAt"] for t in tasks])
    result.update(summary("task_cycle", task_cycle))
    result["overhead_per_task_ms"] = ms(statistics.median(task_cycle) - bare_s)
    result["task_wall_median_ms"] = ms(statistics.median([t["wallTimeUsage"] for t in tasks]))
    result["multitask_cpu"] = cpu_job.figures
    result["not_completed_ok"] = check_completed({job_id: job})["not_completed_ok"]

    # c) `runs` one-task jobs that each take the whole node (2 cpus): they run one after another,
    #    so the cycle between container starts is a whole job's turn through the service.
    with CpuWindow(server, agent) as cpu:
        ids = [(await client.submit(job_body(image, cpus=2)))[0] for _ in range(runs)]
        jobs = await client.wait(ids, timeout=1200)
    job_cycle = cycles([j["execution"]["tasks"][0]["containerStartedAt"] for j in jobs.values()])
    result.update(summary("job_cycle", job_cycle))
    result["overhead_per_job_ms"] = ms(statistics.median(job_cycle) - bare_s)
    # The cycle in two parts: claim -> `podman run` (job dir, stage-in, image check), and
    # `podman run` -> the next job's claim (the container, its inspect and rm, the last output,
    # /finish, the scheduler's assignment, the claim long-poll answering).
    turns = sorted((j["execution"]["claimedAt"], j["execution"]["tasks"][0]["containerStartedAt"]) for j in jobs.values())
    result.update(summary("job_claim_to_container", [start - claimed for claimed, start in turns]))
    result.update(summary("job_container_to_next_claim", [b[0] - a[1] for a, b in itertools.pairwise(turns)]))
    result["backtoback_cpu"] = cpu.figures
    result["not_completed_ok"] += check_completed(jobs)["not_completed_ok"]

    # d) what the podman CLI calls the agent makes besides `podman run` cost each, alone (median).
    figures = await loop.run_in_executor(None, podman_calls, image, 20)
    result["podman_call_ms"] = figures
    result["podman_calls_sum_ms"] = round(sum(figures.values()), 1)
    return result


# --- sets 2 and 3: dispatch latency and throughput --------------------------------------------

async def run_jobs(client: Client, server: LiveServer, image: str, count: int, rate: float | None,
                   poll: float, agent: int | None, set_name: str) -> dict:
    """Submit `count` one-task jobs, open loop at `rate` per second (None: all at once, 4 in
    flight), poll until all are terminal; figures from POST send time to claim, container start
    and completion."""
    body = job_body(image, cpus=1)
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}
    lateness: list[float] = []
    submitting = True

    async def one(at: float) -> None:
        job_id, when = await client.submit(body)
        sent[job_id] = when
        lateness.append(when - at)

    async def poller() -> dict[int, dict]:
        done: dict[int, dict] = {}
        while submitting or len(done) < len(sent):
            waiting = [i for i in sent if i not in done]
            polled = time.time()
            if waiting:
                for job in await client.jobs(waiting):
                    if job["status"] in TERMINAL:
                        done[job["id"]] = job
                        seen[job["id"]] = polled
            if time.time() - polled < poll:
                await asyncio.sleep(poll - (time.time() - polled))
        return done

    with CpuWindow(server, agent) as cpu:
        polling = asyncio.create_task(poller())
        start = time.time() + 0.05
        pending = []
        for n in range(count):
            at = start + (n / rate if rate else 0)
            delay = at - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(asyncio.create_task(one(at if rate else time.time())))
        await asyncio.gather(*pending)
        submitting = False
        jobs = await asyncio.wait_for(polling, timeout=max(600, count * 2))
    ids = sorted(jobs)
    claim = [jobs[i]["execution"]["claimedAt"] - sent[i] for i in ids]
    container = [jobs[i]["execution"]["tasks"][0]["containerStartedAt"] - sent[i] for i in ids]
    completed = [seen[i] - sent[i] for i in ids]
    first, last = min(sent.values()), max(seen.values())
    result = {"benchmark": "dispatch", "set": set_name, "offered_jobs": count,
              "offered_rate_per_s": rate, "submit_s": round(max(sent.values()) - first, 1)}
    result.update(summary("claim", claim))
    result.update(summary("container_start", container))
    result.update(summary("completed", completed))
    result.update(summary("claim_to_container", [c - k for c, k in zip(container, claim)]))
    result["throughput_jobs_per_s"] = round(count / (last - first), 2)
    # Jobs completed per second once the node is busy: from the 10th to the last completion.
    ends = sorted(seen.values())
    if len(ends) > 20:
        result["steady_throughput_jobs_per_s"] = round((len(ends) - 10) / (ends[-1] - ends[9]), 2)
    result["submit_lateness_p95_ms"] = ms(pct(lateness, 95))  # how open the open loop was
    result["poll_interval_s"] = poll
    result.update(check_completed(jobs))
    result.update(cpu.figures)
    return result


# --- driver ----------------------------------------------------------------------------------

async def bench(server: LiveServer, data_dir: Path, args: argparse.Namespace) -> list[dict]:
    image = busybox_image()
    client = Client(server, server.token(USER))
    results = []
    setup = await warm_up(client, image)
    agent = agent_pid(data_dir)
    common = {"local_cpus": 2, "concurrent_jobs": 2, **setup}

    if args.runs:
        results.append(await overhead(client, server, image, args.runs, agent) | common)
        emit(results[-1])
    if args.jobs:
        results.append(await run_jobs(client, server, image, args.jobs, args.rate, args.poll, agent, "dispatch")
                       | common)
        emit(results[-1])
    if args.burst:
        results.append(await run_jobs(client, server, image, args.burst, None, args.poll, agent, "saturation")
                       | common)
        emit(results[-1])
    return results


def emit(result: dict) -> None:
    # A target is met only when the work it timed was done: every job completed, exit code 0.
    done = result["not_completed_ok"] == 0
    if result["set"] == "dispatch":
        result["targets_met"] = done and result["jobs"] == result["offered_jobs"] and \
            result["claim_median_ms"] is not None and result["claim_median_ms"] < TARGETS["claim_median_ms"]
    elif result["set"] == "overhead":
        result["targets_met"] = done and result["overhead_per_task_ms"] < TARGETS["overhead_per_task_ms"]
    result["targets"] = TARGETS
    result["machine"] = machine()
    print(json.dumps(result), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="one-task jobs of the dispatch set (1000)")
    parser.add_argument("--rate", type=float, default=2.0, help="their submissions per second, open loop (2)")
    parser.add_argument("--burst", type=int, default=200, help="jobs submitted at once for the saturation set (200)")
    parser.add_argument("--runs", type=int, default=50,
                        help="bare podman runs, tasks of the multi-task job, back-to-back jobs (50)")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between status polls (0.1)")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and server log (printed)")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    root = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    server = LiveServer(root / "data", f"sqlite:///{root / 'state.db'}", provisioner=True,
                        extra_args=("--idle-timeout", "3600", "--heartbeat-timeout", "60",
                                    "--local-cpus", "2", "--local-memory-mb", "2048"))
    failed = False
    try:
        server.start()
        results = asyncio.run(bench(server, root / "data", args))
        # Non-zero exit when any timed job did not complete cleanly, or did not finish at all.
        failed = any(r["not_completed_ok"] or r.get("jobs") != r.get("offered_jobs", r.get("jobs"))
                     for r in results)
    except Exception as error:
        failed = True
        print(json.dumps({"benchmark": "dispatch", "error": f"{type(error).__name__}: {error}",
                          "machine": machine()}), flush=True)
        print(server.log.read_text()[-3000:] if server.log.exists() else "", file=sys.stderr)
    finally:
        server.stop()
        destroy_nodes(root / "data")
        if args.keep:
            print(f"bench: data dir and server log kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
