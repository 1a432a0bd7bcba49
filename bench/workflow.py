"""Benchmark: workflows. How fast a 10,000-point parameter sweep is accepted and expanded, and how
fast the scheduler drains a sweep on the local cloud with real containers.

Run from the repository root: `.venv/bin/python bench/workflow.py` (~1-2 min). Prints one JSON
line; the exit status is non-zero when the work was not done (a request erred, the sweep did not
expand to every instance, or the drained sweep did not complete).

1. `accept_ms`: `POST /v1/workflows` of a `--points` (10,000) point sweep to a live server on
   SQLite (`serve --no-provisioner`), from the request to the 201 (the workflow and its first
   WORKFLOW_MAX_IDLE instances stored in one commit).
2. `expand_s`: the engine (schema/workflowrun.py, what the provisioner's tick runs) expands all
   `--points` instances into job rows, on the same database, with each idle instance marked
   completed as soon as it exists: the engine's own cost for the whole sweep (instance specs made
   and validated, rows inserted, finished jobs counted), without containers. `accept_plus_expand_s`
   is the sum; target under 5 s (`targets_met`).
3. `drain`: a `--drain-points` (200) sweep of `true` jobs (1 cpu, 0.25 GB, 1 GB disk) on a live
   server with the provisioner and the local cloud (`--local-cpus 2`): `drain_s` from the POST to
   the workflow `completed`, `throughput_jobs_per_s` = points / drain_s, and the same after the
   first job completed (`steady_jobs_per_s`, without the node's boot).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from sqlalchemy import select, update, func  # noqa: E402

from bench.submit import machine  # noqa: E402
from schema import workflowrun  # noqa: E402
from schema.db import make_engine  # noqa: E402
from schema.tables import jobs, workflows  # noqa: E402
from tests.images import busybox_image  # noqa: E402
from tests.live import LiveServer  # noqa: E402
from provisioner.drivers.local import LocalNodeDriver  # noqa: E402


def sweep(points: int, image: str, name: str) -> dict:
    return {"name": name, "jobs": [{"name": "p", "resources": {"cpus": 1, "memory": 0.25, "disk": 1},
                                    "tasks": [{"image": image, "cmd": "true", "env": {"X": "$x"}}]}],
            "factories": [{"type": "parameterSweep", "name": "f", "jobs": ["p"],
                           "parameters": [{"name": "x", "start": 1, "end": points, "step": 1}]}]}


def accept_and_expand(root: Path, points: int, image: str) -> dict:
    url = f"sqlite:///{root / 'accept.db'}"
    server = LiveServer(root / "accept", url).start()
    try:
        headers = {"Authorization": f"Bearer {server.token('bench')}"}
        started = time.perf_counter()
        response = httpx.post(f"{server.url}/v1/workflows", json=sweep(points, image, "accept"), headers=headers,
                              timeout=60)
        accept = time.perf_counter() - started
        if response.status_code != 201:
            return {"error": f"POST /v1/workflows: {response.status_code} {response.text}"}
        workflow_id = response.json()["id"]
    finally:
        server.stop()
    engine = make_engine(url)
    try:
        started, passes = time.perf_counter(), 0
        while True:
            with engine.begin() as connection:
                connection.execute(update(jobs).where(jobs.c.workflow_id == workflow_id, jobs.c.status == "idle")
                                   .values(status="completed", end_time=int(time.time()), in_queue=False,
                                           execution={"tasks": [{"exitCode": 0}]}))
            workflowrun.advance(engine, int(time.time()))
            passes += 1
            with engine.connect() as connection:
                status = connection.execute(select(workflows.c.status).where(workflows.c.id == workflow_id)).scalar()
            if status != "running" and status != "idle":
                break
        expand = time.perf_counter() - started
        with engine.connect() as connection:
            rows = connection.execute(select(func.count()).select_from(jobs).where(
                jobs.c.workflow_id == workflow_id)).scalar()
    finally:
        engine.dispose()
    return {"points": points, "accept_ms": round(accept * 1000, 1), "expand_s": round(expand, 2),
            "accept_plus_expand_s": round(accept + expand, 2), "engine_passes": passes, "rows_made": rows,
            "final_status": status, "expanded_all": rows == points and status == "completed"}


def drain(root: Path, points: int, image: str) -> dict:
    live = LiveServer(root / "drain", f"sqlite:///{root / 'drain.db'}", provisioner=True,
                      extra_args=("--idle-timeout", "120", "--local-cpus", "2", "--local-memory-mb", "4096"))
    try:
        with live:
            with httpx.Client(base_url=live.url + "/v1", headers={"Authorization": f"Bearer {live.token()}"},
                              timeout=30) as http:
                started = time.perf_counter()
                response = http.post("/workflows", json=sweep(points, image, "drain"))
                if response.status_code != 201:
                    return {"error": f"POST /v1/workflows: {response.status_code} {response.text}"}
                workflow_id = response.json()["id"]
                first_done = None
                deadline = time.monotonic() + 60 + points * 3
                while time.monotonic() < deadline:
                    [found] = http.get(f"/workflows/{workflow_id}").json()
                    if first_done is None and found["progress"]["done"] >= 1:
                        first_done = (time.perf_counter(), found["progress"]["done"])
                    if found["status"] not in ("idle", "running"):
                        break
                    time.sleep(0.2)
                took = time.perf_counter() - started
    finally:
        driver = LocalNodeDriver(str(live.data_dir / "nodes"))
        for node in driver.list_nodes():
            driver.destroy_node(node)
    steady = None
    if first_done and took > first_done[0] - started:
        steady = round((points - first_done[1]) / (took - (first_done[0] - started)), 2)
    return {"drain_points": points, "drain_status": found["status"], "drain_progress": found["progress"],
            "drain_s": round(took, 1), "throughput_jobs_per_s": round(points / took, 2), "steady_jobs_per_s": steady,
            "drained": found["status"] == "completed" and found["progress"]["done"] == points}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--drain-points", type=int, default=200)
    args = parser.parse_args()
    image = busybox_image()
    result: dict = {"benchmark": "workflow", "max_idle_per_workflow": workflowrun.WORKFLOW_MAX_IDLE}
    with tempfile.TemporaryDirectory(prefix="bench-wf-") as tmp:
        result.update(accept_and_expand(Path(tmp), args.points, image))
        if "error" not in result and args.drain_points > 0:
            result.update(drain(Path(tmp), args.drain_points, image))
    result["targets_met"] = result.get("accept_plus_expand_s", 1e9) < 5
    done = "error" not in result and result.get("expanded_all") and (args.drain_points <= 0 or result.get("drained"))
    result["work_done"] = bool(done)
    result["machine"] = machine()
    print(json.dumps(result))
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
