"""Benchmark: a burst of N idle 1-cpu jobs onto N new nodes (N = 1, 5, 20), on the local cloud and
on EC2 (moto), where the boot time goes, and the planner alone at 10,000 waiting jobs.

Run from the repository root: `.venv/bin/python bench/burst.py` (`make bench` runs it; ~12 min on
2 cores, bounded by --timeout 900 s). Prints one JSON line with every figure and the machine; the exit status
is non-zero when a check failed (a job not run, a node not ready, nodes left behind, a bad plan).

Each burst gets a `prominence-server serve` of its own (tests/live.py, SQLite, provisioner on,
PROMINENCE_LOG_LEVEL=info for the provisioner's log lines) whose only usable cloud offers one
1-cpu flavour, so the N jobs need N nodes, all booted at once (max_booting 20):

* local: `--local-cpus N --local-memory-mb N*512`, the local record updated to a single
  1-cpu / 512 MB flavour.
* ec2: libcloud's EC2 driver against moto through tests/services.py's Ec2Proxy; instances get
  addresses in 127.0.9.0/24 on this machine's loopback, where an sshd answers (the "VM" is this
  machine, each node a directory under a temporary node_root); install_packages false, flavour
  t2.micro (1 cpu); the local cloud disabled.

The N jobs are submitted at once; each runs in localhost/prominence-busybox (tests/images.py,
never pulled): it prints /proc/uptime (when its process started), then asks the API with its own
job token, through the agent's relay, every second, how many of its owner's jobs are running, and
exits 0 once all N are (or once fewer than N are active: one saw them all and ended), or 3
after --job-limit s. So the jobs end by themselves once the burst is complete, and the agent
reports its timings (`execution`). Checked: every job completed with exit code 0, all N ran at
the same time (the first job to end saw, through the API, N of its N jobs running: its stdout
says so), exactly N nodes were created and became ready. Then the cloud's idle timeout is
lowered to 1 s and the nodes must go away (rows deleted, agents gone, node directories / moto
instances gone); the server is stopped and anything left is stopped too.

Figures per burst (epoch seconds of the client, the server, the agents and the jobs are
comparable: one machine): `running_s` = first POST -> last `execution.claimedAt` (N running,
all claimed), `ready_s` = first POST -> last node `ready_at`; phases, median over the nodes /
jobs, from the node rows, the server log and `execution`:
  queue_to_create   POST -> node row (the provisioner's tick and plan)
  create            node row -> ansible starts (cloud API: create_node, wait running)
  ansible_to_agent  ansible starts -> the agent process starts (/proc starttime)
  agent_register    agent process start -> node ready_at (python start, podman checks, /register)
  configure         the whole ansible-runner run ("node X configured in N s"; it goes on ~1 s
                    after the agent registered: the playbook's liveness check)
  ready_to_claim    ready_at -> claimedAt (scheduler assignment, claim long-poll)
  claim_to_container  claimedAt -> containerStartedAt (sandbox: disk, netns, slirp4netns; image check)
  container_to_process  containerStartedAt -> the job's first instruction (podman run, conmon, runc)
and CPU seconds spent during the boot (POST -> all ansible runs ended): the server's own
(`server_self`: API, provisioner, libcloud, ansible-runner's event handling), its waited-for
children (`ansible`: ansible-playbook, its forks, local modules, ssh clients), the sshd sessions
(`sshd`: the EC2 "VMs'" side of ansible: module runs), moto, the agents (start -> jobs done,
with their podman calls) and the whole machine (`machine`; the rest is containers, conmon,
slirp4netns and anything else running here: see `machine_busy_before`, the cores busy in the 2 s
before the burst). `ansible_cpu_per_node_s` = (ansible + sshd) / N; `cpu_floor_s` = the CPU
seconds of the server, ansible (both ends) and moto divided by the cores: the least wall time the
boot needs here. ready(20) / ready(1) is reported per cloud (target: at most 2).

Finally `plan()` alone (provisioner/planner.py), 10,000 waiting jobs of 9 shapes (placement
requirements and preferences, autoScalingType none, one shape no cloud can run, one multi-node),
20 clouds of 5 flavours (quotas, one disabled, one in the penalty box, one unhealthy) and 200
nodes (ready, busy, booting, idle too long, lost): time per cycle over --plan-runs runs, and
checks that the plan is sane (launches per cloud within max_booting minus what boots there,
nothing on the disabled or penalised cloud, every job assigned, waiting with a reason or failed
as unsatisfiable - exactly one of these -, assignments and launches within their nodes' and
flavours' room and the jobs' placement).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import re
import shlex
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

import httpx  # noqa: E402
import yaml  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bench.submit import machine, machine_busy  # noqa: E402
from provisioner import planner  # noqa: E402
from schema.db import make_engine  # noqa: E402
from schema.enums import NodeState  # noqa: E402
from schema.tables import jobs, nodes  # noqa: E402
from tests.images import busybox_image  # noqa: E402
from tests.live import LiveServer  # noqa: E402

TARGETS = {"ready_ratio_20_to_1": 2.0, "plan_max_ms": 1000}
SIZES = (1, 5, 20)
SUBNET = "127.0.9.0/24"  # not the tests' 127.0.8.0/24: test_ec2_cloud may run meanwhile
EC2_FLAVOURS = [{"name": "t2.micro", "cpus": 1, "memory_mb": 1024, "disk_gb": 10, "price": 0.0116}]
LOCAL_FLAVOURS = [{"name": "local-1cpu", "cpus": 1, "memory_mb": 512, "disk_gb": 20, "price": 0}]
TERMINAL = ("completed", "failed", "killed", "deleted")
_TICK = os.sysconf("SC_CLK_TCK")


class Failed(Exception):
    """A check failed: the figures would not describe the work asked for."""


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


# --- clocks and CPU ----------------------------------------------------------------------------

def boot_offset() -> float:
    """epoch - CLOCK_BOOTTIME: /proc/uptime and /proc/<pid>/stat's starttime count from boot."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_cpu(pid: int | None) -> tuple[float, float]:
    """(own, waited-for children) CPU seconds of a process; (0, 0) when it is gone."""
    fields = proc_stat(pid) if pid else None
    if not fields:
        return 0.0, 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK, (int(fields[13]) + int(fields[14])) / _TICK


def proc_start(pid: int, offset: float) -> float | None:
    fields = proc_stat(pid)
    return offset + int(fields[19]) / _TICK if fields else None


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def child_pids(name: str) -> list[int]:
    """This process's children whose command line mentions `name` (moto_server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        try:
            if fields and int(fields[1]) == os.getpid() and name in (entry / "cmdline").read_bytes().decode(
                    errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


class Cpu:
    """CPU seconds of the parts of a burst, between two `sample()`s."""

    def __init__(self, server: LiveServer, sshd_pids: list[int], moto_pids: list[int]):
        self.server, self.sshd_pids, self.moto_pids = server, sshd_pids, moto_pids

    def sample(self) -> dict[str, float]:
        own, children = proc_cpu(self.server.process.pid)
        return {"server_self": own, "ansible": children,
                "sshd": sum(sum(proc_cpu(p)) for p in self.sshd_pids),
                "moto": sum(sum(proc_cpu(p)) for p in self.moto_pids),
                "machine": machine_busy(), "wall": time.monotonic()}

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: round(after[k] - before[k], 2) for k in before}


def busy_now(seconds: float = 2.0) -> float:
    """Cores busy on the machine (other work, before a burst starts)."""
    b0, t0 = machine_busy(), time.monotonic()
    time.sleep(seconds)
    return round((machine_busy() - b0) / (time.monotonic() - t0), 2)


# --- the server and its clouds ----------------------------------------------------------------

def cli(server: LiveServer, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", *args, "--data-dir", str(server.data_dir),
                           "--database-url", server.database_url], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise Failed(f"prominence-server {' '.join(args[:3])}: {done.stderr.strip()[-500:]}")
    return done.stdout


def job_body(image: str, n: int, limit: int) -> dict:
    """A job that prints when its process started (/proc/uptime), then exits 0 once its owner's
    N jobs are all running, or once fewer than N are still active (one has seen them all running
    and ended already); 3 after `limit` s."""
    script = (
        "cat /proc/uptime; i=0; "
        f"while [ $i -lt {limit} ]; do i=$((i+1)); "
        "if out=$(wget -qO- --header \"Authorization: Bearer $PROMINENCE_TOKEN\" \"$PROMINENCE_URL/jobs\"); then "
        "r=$(echo \"$out\" | grep -o '\"status\":\"running\"' | wc -l); "
        "a=$(echo \"$out\" | grep -o '\"status\":\"' | wc -l); "
        f"if [ \"$r\" -ge {n} ] || [ \"$a\" -lt {n} ]; then echo \"$r of $a active jobs running\"; exit 0; fi; "
        "fi; sleep 1; done; echo 'gave up waiting'; exit 3")
    return {"resources": {"cpus": 1, "memory": 0.25, "disk": 1},
            "tasks": [{"image": image, "cmd": f"sh -c {shlex.quote(script)}"}]}


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\S+) (\w+) (.*)$")


def log_events(server: LiveServer, names: set[str]) -> dict[str, dict[str, float]]:
    """Per node name: when ansible started ("configuring node HOST in DIR over ...") and how long
    the run took ("node NAME configured in N s"), from the server log."""
    events: dict[str, dict[str, float]] = {}
    for line in server.log.read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if not match:
            continue
        when = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        text = match.group(4)
        if found := re.match(r"configuring node \S+ in (\S+) over", text):
            name = Path(found.group(1)).name
            if name in names:
                events.setdefault(name, {})["configure_start"] = when
        elif (found := re.match(r"node (\S+) configured in ([\d.]+) s", text)) and found.group(1) in names:
            events.setdefault(found.group(1), {}).update(configure_s=float(found.group(2)), configured_at=when)
    return events


def node_rows(engine) -> list:
    with engine.connect() as connection:
        return connection.execute(select(nodes).order_by(nodes.c.id)).all()


def job_nodes(engine, ids: list[int]) -> dict[int, int | None]:
    with engine.connect() as connection:
        return dict(connection.execute(select(jobs.c.id, jobs.c.node_id).where(jobs.c.id.in_(ids))).all())


def remaining(deadline: float, want: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Failed("the benchmark's --timeout ran out")
    return min(want, left)


def wait_until(check, timeout: float, what: str, interval: float = 0.2):
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise Failed(f"not within {timeout:.0f} s: {what}")
        time.sleep(interval)


# --- one burst -----------------------------------------------------------------------------------

def burst(kind: str, server: LiveServer, node_root: Path, n: int, image: str, args: argparse.Namespace,
          deadline: float, cpu: Cpu, world=None) -> dict:
    engine = make_engine(server.database_url)
    cloud = "local" if kind == "local" else "aws"
    result: dict = {"cloud": kind, "n": n}
    try:
        result["machine_busy_before"] = busy_now()
        api = httpx.Client(base_url=server.url + "/v1", timeout=30,
                           headers={"Authorization": f"Bearer {server.token(f'bench-burst-{kind}-{n}')}"})
        body = job_body(image, n, args.job_limit)
        offset = boot_offset()
        before = cpu.sample()
        t0 = time.time()
        ids = []
        for _ in range(n):
            answer = api.post("/jobs", json=body)
            if answer.status_code != 201:
                raise Failed(f"POST /v1/jobs: HTTP {answer.status_code} {answer.text[:200]}")
            ids.append(answer.json()["id"])
        result["submit_s"] = round(time.time() - t0, 3)

        # Poll until every job has ended; note when the client first saw all N running.
        seen_running = None
        done: dict[int, dict] = {}
        end = time.monotonic() + remaining(deadline, args.burst_timeout)
        query = f"/jobs?id={','.join(map(str, ids))}&detail=true"
        while len(done) < n:
            if time.monotonic() > end:
                statuses = {j: (done.get(j) or {}).get("status", "not terminal") for j in ids}
                raise Failed(f"{kind} N={n}: jobs not finished in time: {statuses}")
            polled = time.time()
            listing = api.get(query).json()
            if seen_running is None and sum(j["status"] in ("running", *TERMINAL) for j in listing) == n \
                    and any(j["status"] == "running" for j in listing):
                seen_running = polled
            for job in listing:
                if job["status"] in TERMINAL:
                    done[job["id"]] = job
            time.sleep(0.25)
        result["running_seen_by_client_s"] = round(seen_running - t0, 2) if seen_running else None

        # All ansible runs have ended (the playbook goes on ~1 s after the node is usable).
        rows = [r for r in node_rows(engine) if r.cloud == cloud]
        names = {r.name for r in rows}
        expected = sum(r.state == NodeState.READY for r in rows)

        def ansible_ended() -> dict | None:
            found = log_events(server, names)
            return found if sum("configure_s" in v for v in found.values()) >= expected else None

        events = wait_until(ansible_ended, remaining(deadline, 120), "every node's ansible run ended (server log)")
        after = cpu.sample()

        bad = [j for j in done.values() if j["status"] != "completed"
               or any(t.get("exitCode") != 0 for t in j.get("execution", {}).get("tasks", []))]
        if bad:
            print(f"bench: {kind} N={n}: {len(bad)} jobs did not complete with exit code 0, e.g. "
                  f"{json.dumps(bad[0])[:800]}", file=sys.stderr)
        result["jobs_completed_ok"] = n - len(bad)
        executions = {j["id"]: j.get("execution", {}) for j in done.values()}
        claims = {i: e.get("claimedAt") for i, e in executions.items()}
        starts = {i: (e.get("tasks") or [{}])[0].get("containerStartedAt") for i, e in executions.items()}
        if None in claims.values() or None in starts.values():
            raise Failed(f"{kind} N={n}: jobs without the agent's timings: {executions}")
        outputs = {job_id: api.get(f"/jobs/{job_id}/stdout").text.splitlines() for job_id in ids}
        # All N at once: the first job to end saw, through the API, N of its N jobs running.
        result["all_running_at_once"] = any(f"{n} of {n} active jobs running" in lines for lines in outputs.values())
        result["running_s"] = round(max(claims.values()) - t0, 2)

        ready = [r for r in rows if r.state == NodeState.READY and r.ready_at]
        result["nodes_created"] = len(rows)
        result["nodes_ready"] = len(ready)
        result["nodes_failed"] = sum(r.state in (NodeState.FAILED, NodeState.LOST) for r in rows)
        if result["nodes_failed"]:
            failed = [(r.name, r.state_reason) for r in rows if r.state in (NodeState.FAILED, NodeState.LOST)]
            print(f"bench: {kind} N={n}: failed nodes: {failed}", file=sys.stderr)
        result["ready_s"] = round(max(r.ready_at for r in ready) - t0, 2) if ready else None
        result["first_ready_s"] = round(min(r.ready_at for r in ready) - t0, 2) if ready else None

        # Phases.
        agents = {r.name: read_pid(node_root / r.name / "agent.pid") for r in ready}
        agent_start = {name: proc_start(pid, offset) for name, pid in agents.items() if pid}
        agent_cpu = sum(sum(proc_cpu(pid)) for pid in agents.values() if pid)
        by_id = {r.id: r for r in rows}
        placed = job_nodes(engine, ids)
        phases: dict[str, list[float]] = {k: [] for k in (
            "queue_to_create", "create", "ansible_to_agent", "agent_register", "configure", "boot", "ready_to_claim",
            "claim_to_container", "container_to_process")}
        for r in ready:
            e = events.get(r.name, {})
            phases["queue_to_create"].append(r.created_at - t0)
            phases["boot"].append(r.ready_at - r.created_at)
            if "configure_start" in e:
                phases["create"].append(e["configure_start"] - r.created_at)
                if agent_start.get(r.name):
                    phases["ansible_to_agent"].append(agent_start[r.name] - e["configure_start"])
            if agent_start.get(r.name):
                phases["agent_register"].append(r.ready_at - agent_start[r.name])
            if "configure_s" in e:
                phases["configure"].append(e["configure_s"])
        for job_id, job in done.items():
            node = by_id.get(placed.get(job_id))
            if node is not None and node.ready_at:
                phases["ready_to_claim"].append(claims[job_id] - node.ready_at)
            phases["claim_to_container"].append(starts[job_id] - claims[job_id])
            try:
                phases["container_to_process"].append(offset + float(outputs[job_id][0].split()[0]) - starts[job_id])
            except (IndexError, ValueError):
                pass
        result["phases_median_s"] = {k: median(v) for k, v in phases.items()}
        result["phases_max_s"] = {k: round(max(v), 2) if v else None for k, v in phases.items()}
        spent = Cpu.delta(before, after)
        wall = spent.pop("wall")
        result["boot_window_s"] = round(wall, 1)
        result["cpu_s"] = {**spent, "agents": round(agent_cpu, 2)}
        result["cores_used"] = round(spent["machine"] / wall, 2) if wall else None
        result["ansible_cpu_per_node_s"] = round((spent["ansible"] + spent["sshd"]) / max(1, len(ready)), 2)
        # The least wall time the boot's CPU work (ours, ansible's both ends, moto) needs on this machine.
        cores = len(os.sched_getaffinity(0))
        result["cpu_floor_s"] = round(sum(spent[k] for k in ("server_self", "ansible", "sshd", "moto")) / cores, 1)
        result["ansible_runs_overlapping_max"] = max_overlap(
            [(e["configure_start"], e["configure_start"] + e["configure_s"]) for e in events.values()
             if "configure_start" in e and "configure_s" in e])

        # The nodes must go away once idle: rows deleted, agents gone, directories / instances gone.
        cli(server, "cloud", "update", cloud, "--set", "idle_timeout=1")
        gone_by = remaining(deadline, 90)
        wait_until(lambda: all(r.state in (NodeState.DELETED,) for r in node_rows(engine) if r.cloud == cloud
                               and r.name in names and r.state not in (NodeState.FAILED, NodeState.LOST)),
                   gone_by, f"{kind} N={n}: the idle nodes are deleted")
        wait_until(lambda: not any(pid and proc_stat(pid) and proc_stat(pid)[0] not in "ZX"
                                   for pid in agents.values()), remaining(deadline, 30),
                   f"{kind} N={n}: the nodes' agents exit")
        if kind == "local":
            wait_until(lambda: not any((node_root / name).exists() for name in names), remaining(deadline, 30),
                       "the local node directories are removed")
        else:
            wait_until(lambda: all(i.state == "terminated" for i in world.driver().list_nodes() if i.name in names),
                       remaining(deadline, 30), "the moto instances are terminated")
        result["nodes_gone"] = True
        result["checks_ok"] = bool(not bad and result["all_running_at_once"] and len(ready) == n
                                   and len(rows) == n and result["nodes_gone"])
        return result
    finally:
        engine.dispose()


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = current = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best


# --- the two clouds ------------------------------------------------------------------------------

def run_local(n: int, image: str, root: Path, args: argparse.Namespace, deadline: float) -> dict:
    server = LiveServer(root / "data", f"sqlite:///{root / 'state.db'}", provisioner=True,
                        env={"PROMINENCE_LOG_LEVEL": "info"},
                        extra_args=("--local-cpus", str(n), "--local-memory-mb", str(n * 512),
                                    "--idle-timeout", "600", "--heartbeat-timeout", "120"))
    try:
        server.start()
        cli(server, "cloud", "update", "local", "--set", f"flavours={json.dumps(LOCAL_FLAVOURS)}",
            "--set", "max_booting=20", "--set", "idle_timeout=600")
        return burst("local", server, root / "data" / "nodes", n, image, args, deadline, Cpu(server, [], []))
    finally:
        server.stop()  # stops the local nodes (agents, containers) left, if any
        from bench.dispatch import destroy_nodes
        destroy_nodes(root / "data")


def run_ec2(n: int, image: str, root: Path, args: argparse.Namespace, deadline: float, proxy, sshd,
            moto_pids: list[int]) -> dict:
    from tests.services import prepare_ec2_world

    world = prepare_ec2_world(proxy.url, subnet_cidr=SUBNET)  # resets moto: addresses from .4 again
    node_root = root / "ec2-nodes"
    server = LiveServer(root / "data", f"sqlite:///{root / 'state.db'}", provisioner=True,
                        env={"PROMINENCE_LOG_LEVEL": "info"}, extra_args=("--heartbeat-timeout", "120"))
    try:
        server.start()
        document = {"name": "aws", "provider": "ec2", "driver_args": world.driver_args,
                    "create_options": {"ex_subnet": {"id": world.subnet_id}}, "image": world.image_id,
                    "region": "us-east-1", "site": "aws", "ssh_user": "root", "ssh_port": sshd.port,
                    "node_root": str(node_root), "install_packages": False, "flavours": EC2_FLAVOURS,
                    "max_booting": 20, "idle_timeout": 600, "create_timeout": 60, "running_timeout": 60,
                    "configure_timeout": 600,
                    "credentials": {"key": world.key, "secret": world.secret,
                                    "ssh_private_key": Path(sshd.key_file).read_text()}}
        path = root / "clouds.yaml"
        path.write_text(yaml.safe_dump([document]))
        path.chmod(0o600)
        cli(server, "cloud", "apply", str(path))
        cli(server, "cloud", "disable", "local")
        sshd_pids = [p for p in (read_pid(f) for f in (sshd.pid_file, *sshd.extra_pid_files)) if p]
        return burst("ec2", server, node_root, n, image, args, deadline, Cpu(server, sshd_pids, moto_pids), world)
    finally:
        server.stop()
        stop_ec2_nodes(node_root)


def stop_ec2_nodes(node_root: Path) -> None:
    """What the "VMs" leave on this machine when a burst failed: agents, containers, sandboxes."""
    from provisioner.agent.runtime import Podman
    from provisioner.agent.sandbox import release
    from provisioner.drivers.local import stop_agent

    if not node_root.exists():
        return
    for node_dir in node_root.iterdir():
        stop_agent(node_dir)
        conf = node_dir / "containers.conf"
        with contextlib.suppress(Exception):
            Podman(containers_conf=str(conf) if conf.exists() else None).stop_all(f"{node_dir.name}-")
        release(str(node_dir))


# --- plan() alone --------------------------------------------------------------------------------

def plan_snapshot(now: float) -> planner.Snapshot:
    rng = random.Random(7)
    base = [(2, 4096, 20), (4, 8192, 40), (8, 16384, 80), (16, 32768, 160), (32, 65536, 320)]
    sites, regions = ["site-a", "site-b", "site-c", "site-d", "site-e"], ["region-1", "region-2", "region-3",
                                                                          "region-4"]
    clouds = []
    for c in range(20):
        factor = 0.8 + 0.05 * c
        flavours = tuple(planner.Flavour(f"f{cpus}", cpus, mem, disk, round(0.01 * cpus * factor, 4))
                         for cpus, mem, disk in base)
        clouds.append(planner.CloudState(
            f"cloud-{c:02d}", flavours, site=sites[c % 5], region=regions[c % 4], enabled=c != 19,
            max_instances=None if c % 3 else 40, max_cpus=None if c % 4 else 400, max_memory_mb=None,
            min_nodes=1 if c == 18 else 0, max_booting=4 + c % 7, idle_timeout=600, boot_timeout=1800,
            failures=(now - 30, now - 20, now - 10) if c == 17 else (now - 100,) if c == 16 else ()))
    shapes = [  # (weight, shape)
        (50, planner.Shape(1, 2048, 10)),
        (15, planner.Shape(2, 4096, 20)),
        (8, planner.Shape(4, 8192, 40)),
        (4, planner.Shape(8, 16000, 50)),
        (8, planner.Shape(1, 1024, 10, placement=planner.Placement(sites=frozenset({"site-a"})))),
        (8, planner.Shape(2, 2048, 10, placement=planner.Placement(
            regions=frozenset({"region-2"}), preferred_sites=frozenset({"site-b"})))),
        (4, planner.Shape(1, 2048, 10, autoscale=False)),
        (2, planner.Shape(64, 4096, 10)),  # no flavour anywhere: unsatisfiable
        (1, planner.Shape(1, 2048, 10, nodes=2)),  # multi-node: waits with its reason
    ]
    population, weights = zip(*[(s, w) for w, s in shapes])
    waiting = [planner.Demand(100_000 + i, shape) for i, shape in enumerate(rng.choices(population, weights, k=10_000))]
    views = []
    for i in range(200):
        cloud = clouds[i % 20]
        flavour = cloud.flavours[i % 5]
        if i < 140:  # ready, fresh heartbeat; most full, some with room
            free = 0 if i % 4 else flavour.cpus // 2
            views.append(planner.NodeView(
                i + 1, cloud.name, NodeState.READY, free, flavour.memory_mb * free // flavour.cpus,
                flavour.disk_gb * free // flavour.cpus, flavour.cpus, flavour.memory_mb, busy=free < flavour.cpus,
                created_at=now - 3600, idle_since=None, last_heartbeat=now - 1))
        elif i < 170:  # booting
            views.append(planner.NodeView(
                i + 1, cloud.name, NodeState.CREATING if i % 2 else NodeState.CONFIGURING, flavour.cpus,
                flavour.memory_mb, flavour.disk_gb, flavour.cpus, flavour.memory_mb, busy=False,
                created_at=now - 60))
        elif i < 190:  # ready and idle, half of them for too long
            views.append(planner.NodeView(
                i + 1, cloud.name, NodeState.READY, flavour.cpus, flavour.memory_mb, flavour.disk_gb, flavour.cpus,
                flavour.memory_mb, busy=False, created_at=now - 7200,
                idle_since=now - (900 if i % 2 else 30), last_heartbeat=now - 1))
        else:  # no heartbeat for long: lost
            views.append(planner.NodeView(
                i + 1, cloud.name, NodeState.READY, 0, 0, 0, flavour.cpus, flavour.memory_mb, busy=True,
                created_at=now - 7200, last_heartbeat=now - 600))
    return planner.Snapshot(now, waiting, views, clouds)


def check_plan(snapshot: planner.Snapshot, plan: planner.Plan) -> list[str]:
    problems = []
    clouds = {c.name: c for c in snapshot.clouds}
    gone = {d.node_id for d in plan.deletions}
    waiting = {d.job_id: d.shape for d in snapshot.waiting}
    assigned, reasoned, failed = set(plan.assignments), set(plan.reasons), set(plan.unsatisfiable)
    if assigned & reasoned or assigned & failed or reasoned & failed:
        problems.append("a job is in more than one of assignments / reasons / unsatisfiable")
    if assigned | reasoned | failed != set(waiting):
        problems.append(f"{len(set(waiting) - assigned - reasoned - failed)} jobs have neither an assignment, "
                        f"a reason nor a failure")
    for cloud in clouds.values():
        booting = sum(n.cloud == cloud.name and n.state in (NodeState.CREATING, NodeState.CONFIGURING)
                      and n.node_id not in gone for n in snapshot.nodes)
        launched = sum(launch.cloud == cloud.name for launch in plan.launches)
        if launched > max(0, cloud.max_booting - booting):
            problems.append(f"{cloud.name}: {launched} launches, max_booting {cloud.max_booting}, {booting} booting")
        if launched and (not cloud.enabled or planner.penalty_until(cloud.failures, snapshot.now)):
            problems.append(f"{cloud.name}: launches on a disabled or penalised cloud")
    launched_jobs = [j for launch in plan.launches for j in launch.job_ids]
    if len(launched_jobs) != len(set(launched_jobs)) or not set(launched_jobs) <= reasoned:
        problems.append("a job is in two launches, or launched without a 'creating' reason")
    for launch in plan.launches:
        cloud, flavour = clouds[launch.cloud], launch.flavour
        need = [sum(getattr(waiting[j], k) for j in launch.job_ids) for k in ("cpus", "memory_mb", "disk_gb")]
        if need[0] > flavour.cpus or need[1] > flavour.memory_mb or need[2] > flavour.disk_gb or any(
                not waiting[j].placement.allows(cloud.site, cloud.region) or not waiting[j].autoscale
                for j in launch.job_ids):
            problems.append(f"launch on {cloud.name} {flavour.name} does not fit or place its jobs")
    room = {n.node_id: [n.cpus, n.memory_mb, n.disk_gb, n] for n in snapshot.nodes}
    for job_id, node_id in plan.assignments.items():
        shape, free = waiting[job_id], room[node_id]
        free[0] -= shape.cpus
        free[1] -= shape.memory_mb
        free[2] -= shape.disk_gb
        node = free[3]
        cloud = clouds[node.cloud]
        if node.state != NodeState.READY or node_id in gone or not shape.placement.allows(cloud.site, cloud.region):
            problems.append(f"job {job_id} assigned to node {node_id}, which is not ready or not allowed")
    if any(free[0] < 0 or free[1] < 0 or free[2] < 0 for free in room.values()):
        problems.append("a node was given more than its room")
    never = {j for j, s in waiting.items() if s.cpus > 32}
    if failed != never:
        problems.append(f"unsatisfiable: {len(failed)} jobs, expected the {len(never)} that no flavour fits")
    if not plan.launches or not plan.assignments or not plan.deletions:
        problems.append("the plan launches, assigns or deletes nothing")
    return problems


def bench_plan(runs: int) -> dict:
    now = time.time()
    snapshot = plan_snapshot(now)
    took, plan = [], None
    for _ in range(runs):
        started = time.perf_counter()
        plan = planner.plan(snapshot)
        took.append(time.perf_counter() - started)
    problems = check_plan(snapshot, plan)
    for problem in problems:
        print(f"bench: plan: {problem}", file=sys.stderr)
    return {"waiting_jobs": len(snapshot.waiting), "shapes": len({d.shape for d in snapshot.waiting}),
            "clouds": len(snapshot.clouds), "flavours": sum(len(c.flavours) for c in snapshot.clouds),
            "nodes": len(snapshot.nodes), "runs": runs,
            "median_ms": round(statistics.median(took) * 1000, 1), "max_ms": round(max(took) * 1000, 1),
            "first_ms": round(took[0] * 1000, 1), "assignments": len(plan.assignments),
            "launches": len(plan.launches), "jobs_in_launches": sum(len(x.job_ids) for x in plan.launches),
            "deletions": len(plan.deletions), "unsatisfiable": len(plan.unsatisfiable),
            "waiting_with_reason": len(plan.reasons), "checks_ok": not problems}


# --- driver --------------------------------------------------------------------------------------

def attempt(result: dict, what: str, deadline: float, run) -> None:
    """One burst: its figures (also on stderr as it ends), or its error."""
    if time.monotonic() >= deadline:
        result["errors"].append(f"{what}: not run, the benchmark's --timeout ran out")
        return
    try:
        result["bursts"].append(run())
        print(f"bench: {json.dumps(result['bursts'][-1])}", file=sys.stderr, flush=True)
    except Exception as error:  # noqa: BLE001 - reported, and the exit status says so
        result["errors"].append(f"{what}: {type(error).__name__}: {error}"[:1500])
        print(f"bench: {result['errors'][-1]}", file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="burst sizes (1,5,20)")
    parser.add_argument("--clouds", default="local,ec2", help="local, ec2 or both (local,ec2)")
    parser.add_argument("--timeout", type=float, default=900, help="bound of the whole benchmark, s (900)")
    parser.add_argument("--burst-timeout", type=float, default=420, help="bound of one burst, s (420)")
    parser.add_argument("--job-limit", type=int, default=240, help="s a job waits for the others at most (240)")
    parser.add_argument("--plan-runs", type=int, default=10, help="plan() cycles timed (10)")
    parser.add_argument("--keep", action="store_true", help="keep the data dirs and server logs (printed)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    kinds = [k for k in args.clouds.split(",") if k]
    deadline = time.monotonic() + args.timeout
    result: dict = {"benchmark": "burst", "sizes": sizes, "bursts": [], "errors": []}
    top = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    try:
        result["plan"] = bench_plan(args.plan_runs)
        image = busybox_image()
        if "local" in kinds:
            for n in sizes:
                attempt(result, f"local N={n}", deadline, lambda n=n: run_local(n, image, top / f"local-{n}", args,
                                                                               deadline))
        if "ec2" in kinds:
            from tests.services import Ec2Proxy, moto_server, sshd_server, subnet_host_addresses

            with moto_server() as url, Ec2Proxy(url) as proxy, \
                    sshd_server(top / "sshd", addresses=subnet_host_addresses(SUBNET, max(sizes) + 12)) as sshd:
                moto_pids = child_pids("moto_server")
                for n in sizes:
                    attempt(result, f"ec2 N={n}", deadline, lambda n=n: run_ec2(
                        n, image, top / f"ec2-{n}", args, deadline, proxy, sshd, moto_pids))
    except Exception as error:  # noqa: BLE001
        result["errors"].append(f"{type(error).__name__}: {error}"[:1500])
    finally:
        if args.keep:
            print(f"bench: data dirs and server logs kept in {top}", file=sys.stderr)
        else:
            shutil.rmtree(top, ignore_errors=True)

    for kind in kinds:
        ready = {b["n"]: b.get("ready_s") for b in result["bursts"] if b["cloud"] == kind}
        running = {b["n"]: b.get("running_s") for b in result["bursts"] if b["cloud"] == kind}
        if ready.get(1) and ready.get(max(sizes)):
            result[f"{kind}_ready_ratio_{max(sizes)}_to_1"] = round(ready[max(sizes)] / ready[1], 2)
        if running.get(1) and running.get(max(sizes)):
            result[f"{kind}_running_ratio_{max(sizes)}_to_1"] = round(running[max(sizes)] / running[1], 2)
    checks_ok = (not result["errors"] and len(result["bursts"]) == len(sizes) * len(kinds)
                 and all(b.get("checks_ok") for b in result["bursts"]) and result.get("plan", {}).get("checks_ok"))
    result["checks_ok"] = bool(checks_ok)
    result["targets_met"] = bool(checks_ok and result["plan"]["max_ms"] < TARGETS["plan_max_ms"] and all(
        result.get(f"{k}_ready_ratio_20_to_1", 99) <= TARGETS["ready_ratio_20_to_1"] for k in kinds))
    result["targets"] = TARGETS
    result["machine"] = machine()
    print(json.dumps(result), flush=True)
    return 0 if checks_ok else 1


if __name__ == "__main__":
    sys.exit(main())
