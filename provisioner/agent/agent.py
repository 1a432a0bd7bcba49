"""The node agent: registers, heartbeats, long-polls for jobs, runs each in containers, reports back.

Run as `python3 agent.pyz --config agent.json` (the playbook copies this package to the node as one
zip application; `python3 -m agent` works the same). The
config holds the gateway URL, the node's id, name and token, its work dir, its size and the
containers.conf podman needs, and optionally `ca_file`: the PEM bundle an https gateway's
certificate must verify against (default: the system's CAs). Standard library only.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import ssl
import threading
import time
from typing import Any

from . import runtime, sandbox, staging
from .client import Gateway, GatewayError, certificate_error

log = logging.getLogger("prominence.agent")

DEFAULT_WALLTIME_MINUTES = 720  # PROMINENCE's default
STREAM_INTERVAL = 0.5  # seconds between stdout/stderr uploads while a job runs
STREAM_CHUNK = 4 << 20
CLAIM_WAIT = 20


def cpu_info() -> dict[str, str]:
    info = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "vendor_id":
                    info.setdefault("vendor", value)
                elif key == "model name":
                    info.setdefault("model", value)
                elif key == "cpu MHz":
                    info.setdefault("clock", value)
    except OSError:
        pass
    return info


class Agent:
    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.gateway = Gateway(config["gateway"], config["token"], config.get("ca_file"))
        self.node_name = config["node_name"]
        self.work_dir = config["work_dir"]
        self.podman = runtime.Podman(containers_conf=config.get("containers_conf"))
        self.gateway_relay = sandbox.loopback_gateway(config["gateway"])  # relayed into jobs' networks
        self.cpu = cpu_info()
        self.runners: dict[tuple[int, int], JobRunner] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    @property
    def container_prefix(self) -> str:
        return f"{self.node_name}-"

    def run(self) -> int:
        """Registers, then claims and runs jobs until the node must stop. Returns the exit status:
        0 when the gateway let the node go, 1 when it refused it or could not be reached."""
        if self.config.get("containers_conf"):
            runtime.write_containers_conf(self.config["containers_conf"])
        # Left over by an earlier agent on this node: containers, then the jobs' sandboxes.
        self.podman.stop_all(self.container_prefix)
        sandbox.release(self.work_dir)
        os.makedirs(self.work_dir, exist_ok=True)
        try:
            self.gateway.call("POST", "/register", {
                "runtimes": {self.podman.name: self.podman.version()}, "cpu": self.cpu, "agent_pid": os.getpid()},
                retries=int(self.config.get("register_retries", 30)))
        except GatewayError as error:
            log.error("the gateway %s did not register node %s (%s); exiting",
                      self.config["gateway"], self.config["node_id"], error)
            return 1
        except ssl.SSLCertVerificationError as error:  # not retried: it will not verify any better
            log.error("the gateway's certificate did not verify: %s (gateway %s, trusted CAs: %s); node %s is not "
                      "registered; exiting", error.verify_message, self.config["gateway"],
                      self.config.get("ca_file") or "the system's", self.config["node_id"])
            return 1
        except OSError as error:
            log.error("could not reach the gateway %s to register node %s (%s); exiting",
                      self.config["gateway"], self.config["node_id"], error)
            return 1
        log.info("registered as node %s", self.config["node_id"])
        self.exit_status = 0  # the heartbeat thread sets 1 when it gives up on the gateway

        def claim_jobs() -> None:
            while not self.stopping.is_set():
                try:
                    claimed = self.gateway.call("POST", "/claim", params={"wait": CLAIM_WAIT},
                                                timeout=CLAIM_WAIT + 30)["jobs"]
                except GatewayError as error:
                    if error.status in (401, 403):
                        log.error("the gateway no longer knows this node (%s); stopping", error)
                        self.stopping.set()
                        return
                    time.sleep(1)
                    continue
                except OSError:
                    time.sleep(1)
                    continue
                for assignment in claimed:
                    assignment["claimed_at"] = time.time()
                    runner = JobRunner(self, assignment)
                    with self.lock:
                        self.runners[(assignment["id"], assignment["attempt"])] = runner
                    runner.start()

        threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True).start()
        # Claims run in a thread of their own: a claim blocked on an unreachable gateway must not
        # keep the agent from stopping when the heartbeat thread gives up.
        threading.Thread(target=claim_jobs, name="claim", daemon=True).start()
        self.stopping.wait()
        self.shutdown()
        return self.exit_status

    def shutdown(self) -> None:
        """Stops every job of this node, and its containers: none outlives the agent."""
        self.stopping.set()
        with self.lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.stop.set()
        for runner in runners:  # each kills its containers and removes its sandbox
            runner.join(timeout=30)
        self.podman.stop_all(self.container_prefix)

    def finished(self, runner: JobRunner) -> None:
        with self.lock:
            self.runners.pop((runner.job_id, runner.attempt), None)

    def _heartbeats(self) -> None:
        interval = float(self.config.get("heartbeat_interval", 2.0))
        # Past this without a successful heartbeat the node has surely been declared lost and its
        # jobs requeued elsewhere: their containers here would only waste the machine.
        gateway_timeout = float(self.config.get("gateway_timeout", 900))
        last_contact = time.monotonic()
        last_failure: OSError | None = None
        while not self.stopping.wait(interval):
            if time.monotonic() - last_contact > gateway_timeout:
                failure = certificate_error(last_failure) if last_failure else None
                log.error("no answer from the gateway %s for %.0f s%s; stopping this node's containers and exiting",
                          self.config["gateway"], time.monotonic() - last_contact,
                          f" (its certificate did not verify: {failure.verify_message})" if failure else "")
                self.exit_status = 1
                self.stopping.set()
                return
            with self.lock:
                running = [[job_id, attempt] for job_id, attempt in self.runners]
            try:
                answer = self.gateway.call("POST", "/heartbeat", {"running": running}, timeout=30, retries=0)
            except GatewayError as error:
                if error.status in (401, 403):
                    log.error("the gateway no longer knows this node; stopping")
                    self.stopping.set()
                    return
                continue
            except OSError as error:
                last_failure = error
                continue
            last_contact = time.monotonic()
            for job_id, attempt in answer.get("stop", []):
                with self.lock:
                    runner = self.runners.get((job_id, attempt))
                if runner:
                    log.info("stopping job %s (attempt %s) as the gateway asks", job_id, attempt)
                    runner.stop.set()


class JobRunner(threading.Thread):
    """One attempt of one job: stage in, run the tasks, stream output, stage out, report."""

    def __init__(self, agent: Agent, assignment: dict[str, Any]):
        super().__init__(name=f"job-{assignment['id']}", daemon=True)
        self.agent = agent
        self.assignment = assignment
        self.job_id: int = assignment["id"]
        self.attempt: int = assignment["attempt"]
        self.spec: dict[str, Any] = assignment["spec"]
        self.stop = threading.Event()
        self.dir = os.path.join(agent.work_dir, f"job-{self.job_id}-{self.attempt}")
        self.sandbox: sandbox.Sandbox | None = None
        self.over_disk = False  # the agent stopped the job: its disk is full
        self.sent = {"stdout": 0, "stderr": 0}
        self.params = {"attempt": self.attempt}
        self._done_streaming = threading.Event()

    def run(self) -> None:
        try:
            report = self._run()
        except Exception as error:  # a bug or a broken node: let the job be retried elsewhere
            log.exception("job %s failed in the agent", self.job_id)
            report = {"status": "failed", "reason": f"Unable to execute task(s): {error}", "infrastructure": True}
        finally:
            self.agent.finished(self)
            self.agent.podman.settle(self.container_prefix)  # no container outlives its job's report
        try:
            if report is not None:
                self.agent.gateway.call("POST", f"/jobs/{self.job_id}/finish", report, params=self.params, retries=30)
        except (GatewayError, OSError):
            log.exception("could not report the end of job %s", self.job_id)
        finally:
            if self.sandbox is not None:  # (a sandbox that failed to be made removed itself)
                self.sandbox.close()

    @property
    def home(self) -> str:
        return self.sandbox.home

    @property
    def outputs(self) -> dict[str, str]:
        return {"stdout": self.sandbox.stdout, "stderr": self.sandbox.stderr}

    def _run(self) -> dict[str, Any] | None:
        # claimedAt and a task's containerStartedAt are epoch seconds (for bench/dispatch.py).
        execution: dict[str, Any] = {"cpu": self.agent.cpu, "tasks": [], "claimedAt": self.assignment["claimed_at"]}
        started = time.monotonic()
        self.sandbox = sandbox.Sandbox.create(self.dir, self.assignment["disk_gb"], sandbox.uid_base(self.job_id),
                                              self.agent.gateway_relay)
        try:
            staging.write_inputs(self.home, self.spec.get("inputs", []))
            mounts = staging.fetch_artifacts(self.home, self.spec.get("artifacts", []), self.sandbox.mounts,
                                             self.sandbox.create_connection, self.agent.config.get("ca_file"))
            self.sandbox.give_to_job()
        except staging.StageError as error:
            return {"status": "failed", "reason": error.reason, "infrastructure": True,
                    "execution": {**execution, "stageInError": str(error)}}
        execution["stageInTime"] = round(time.monotonic() - started, 3)

        streamer = threading.Thread(target=self._stream_while_running, name=f"stream-{self.job_id}", daemon=True)
        streamer.start()
        try:
            outcome = self._run_tasks(mounts, execution)
        finally:
            self._done_streaming.set()
            streamer.join()
        if outcome is None:  # stopped: the job was deleted or given to another node, or the agent stops
            return None
        self._send_output(everything=True)
        status, reason, infrastructure = outcome
        if status == "completed":
            started = time.monotonic()
            try:
                self._stage_out()
            except staging.StageError as error:
                if not any(task.get("exitCode") for task in execution["tasks"]):
                    status, reason = "failed", error.reason
            execution["stageOutTime"] = round(time.monotonic() - started, 3)
        peaks = [task.get("maxResidentSetSizeKB", 0) for task in execution["tasks"]]
        execution["maxMemoryUsageKB"] = max(peaks, default=0)
        return {"status": status, "reason": reason, "infrastructure": infrastructure, "execution": execution}

    def _environment(self, task: dict[str, Any], number: int, engine: runtime.Podman) -> dict[str, str]:
        resources = self.spec["resources"]
        return {
            **task.get("env", {}),
            "HOME": "/home/user", "TMP": "/tmp", "TEMP": "/tmp", "TMPDIR": "/tmp",
            "PROMINENCE_JOB_ID": str(self.job_id), "PROMINENCE_TASK_NUM": str(number),
            "PROMINENCE_CPUS": str(self.assignment["cpus"]),
            "PROMINENCE_MEMORY": str(resources.get("memory") or resources.get("memoryPerCpu", 1) * self.assignment["cpus"]),
            "PROMINENCE_NODES": "1", "PROMINENCE_NODE_NUM": "0",
            "PROMINENCE_CONTAINER_RUNTIME": engine.name,
            # The gateway's own URL: on a node's loopback it is relayed into the job's network.
            "PROMINENCE_URL": self.assignment["url"], "PROMINENCE_TOKEN": self.assignment["token"],
        }

    @property
    def container_prefix(self) -> str:
        return f"{self.agent.container_prefix}{self.job_id}-{self.attempt}-"

    def _container(self, task: dict[str, Any], number: int, engine: runtime.Podman, image: str,
                   mounts: list[tuple[str, str]]) -> runtime.ContainerSpec:
        return runtime.ContainerSpec(
            name=f"{self.container_prefix}{number}",
            image=image, argv=runtime.build_argv(task.get("cmd"), task.get("args")),
            env=self._environment(task, number, engine), workdir=task.get("workdir") or "/home/user",
            mounts=[(self.home, "/home/user"), (self.sandbox.tmp, "/tmp"), (self.sandbox.tmp, "/var/tmp"), *mounts],
            cpus=self.assignment["cpus"], memory_mb=self.assignment["memory_mb"],
            stdout_path=self.sandbox.stdout, stderr_path=self.sandbox.stderr,
            network=f"ns:{self.sandbox.netns}", dns=(sandbox.SLIRP_DNS,), uid_base=self.sandbox.uid)

    def _run_tasks(self, mounts: list[tuple[str, str]], execution: dict[str, Any]) -> tuple[str, str, bool] | None:
        policies = self.spec.get("policies", {})
        walltime = 60 * (self.spec["resources"].get("walltime") or DEFAULT_WALLTIME_MINUTES)
        deadline = time.monotonic() + walltime
        sidecars: list[threading.Thread] = []
        sidecars_stop = threading.Event()
        images: dict[str, runtime.ImageInfo] = {}  # prepared once per job: later tasks find it cached
        try:
            for number, task in enumerate(self.spec["tasks"]):
                record: dict[str, Any] = {}
                execution["tasks"].append(record)
                try:
                    engine = runtime.runtime_for(task.get("runtime"), self.agent.podman)
                    credential = task.get("imagePullCredential")
                    archive = self.assignment.get("images", {}).get(task["image"])  # an uploaded archive
                    image = images.get(task["image"]) or (self._load_archive(engine, archive) if archive else
                                                          engine.prepare_image(task["image"], (
                                                              credential["username"], credential["token"])
                                                              if credential else None))
                    images[task["image"]] = runtime.ImageInfo("cached", -1.0, image.sha256, image.ref)
                except (runtime.RuntimeUnavailable, ValueError) as error:  # the description's fault
                    return "failed", f"Unable to execute task(s): {error}", False
                except runtime.ImageError as error:
                    record["imagePullStatus"] = "failed"
                    execution["imagePullError"] = str(error)
                    return "failed", "Container image pull failed", True
                execution.setdefault("runtimeVersion", {})[engine.name] = engine.version()
                record.update(imagePullStatus=image.pull_status, imagePullTime=image.pull_time,
                              imageSha256=image.sha256, runtime=engine.name)
                try:
                    spec = self._container(task, number, engine, image.ref, mounts)
                except ValueError as error:  # e.g. a cmd that cannot be split: the description's fault
                    return "failed", f"Unable to execute task(s): {error}", False
                if task.get("type") == "sidecar":
                    sidecar = threading.Thread(target=self._run_sidecar, args=(engine, spec, sidecars_stop, record),
                                               daemon=True)
                    sidecar.start()
                    sidecars.append(sidecar)
                    continue
                retries_left = policies.get("maximumTaskRetries", 0)
                record["retries"] = 0
                while True:
                    record["containerStartedAt"] = time.time()
                    try:
                        result = engine.run(spec, self.stop, max(deadline - time.monotonic(), 0.001))
                    except runtime.ContainerError as error:
                        return "failed", f"Unable to execute task(s): {error}", False
                    record.update(exitCode=result.exit_code, wallTimeUsage=round(result.wall_time, 3),
                                  cpuTimeUsage=round(result.cpu_time, 3), maxResidentSetSizeKB=result.max_rss_kb)
                    if result.killed == "stopped":
                        return ("killed", "Job used too much disk space", False) if self.over_disk else None
                    if result.killed == "walltime":
                        return "killed", "Walltime limit exceeded", False
                    if result.killed == "memory":
                        return "killed", "Job used too much memory", False
                    if result.exit_code == 0 or retries_left == 0:
                        break
                    retries_left -= 1
                    record["retries"] += 1
                if result.exit_code != 0 and not policies.get("ignoreTaskFailures"):
                    break  # later tasks depend on this one
            return "completed", "", False
        finally:
            sidecars_stop.set()
            for sidecar in sidecars:
                sidecar.join()

    def _load_archive(self, engine: runtime.Podman, url: str) -> runtime.ImageInfo:
        """An uploaded image archive: fetched by the agent (from the gateway's signed URL) into a
        directory of its own that no job reaches, then `podman load`ed (never used as a path)."""
        directory = os.path.join(self.agent.work_dir, "images")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        try:
            path, sha256 = staging.fetch_image(url, directory, self.agent.config.get("ca_file"))
        except staging.StageError as error:
            raise runtime.ImageError(str(error)) from None
        try:
            return engine.load_archive(path, sha256)
        finally:
            os.remove(path)

    def _run_sidecar(self, engine: runtime.Podman, spec: runtime.ContainerSpec, stop: threading.Event,
                     record: dict[str, Any]) -> None:
        try:  # `stop` is set when the other tasks end, however they end
            result = engine.run(spec, stop, None)
        except runtime.ContainerError as error:
            record["error"] = str(error)
            return
        record.update(exitCode=result.exit_code, wallTimeUsage=round(result.wall_time, 3),
                      cpuTimeUsage=round(result.cpu_time, 3), maxResidentSetSizeKB=result.max_rss_kb)

    # -- output ---------------------------------------------------------------------------------

    def _stream_while_running(self) -> None:
        # An Event rather than sleep(): when the tasks end, the join above returns at once
        # instead of after the rest of a STREAM_INTERVAL; the final _send_output sends the rest.
        while not self._done_streaming.wait(STREAM_INTERVAL):
            if self.sandbox.disk_full() and not self.stop.is_set():
                log.info("job %s has filled its disk of %s GB: stopping it", self.job_id, self.assignment["disk_gb"])
                self.over_disk = True
                self.stop.set()
            self._send_output()

    def _send_output(self, everything: bool = False) -> None:
        """Sends what the streams got since the last call: a chunk of each while the job runs,
        all of it (retrying longer) at the end."""
        for stream, path in self.outputs.items():
            while True:
                try:
                    with open(path, "rb") as handle:
                        handle.seek(self.sent[stream])
                        data = handle.read(STREAM_CHUNK)
                except OSError:
                    break
                if not data and self.sent[stream]:
                    break
                try:
                    answer = self.agent.gateway.call("POST", f"/jobs/{self.job_id}/{stream}", data,
                                                     params={**self.params, "offset": self.sent[stream]},
                                                     retries=30 if everything else 2)
                except (GatewayError, OSError):
                    break
                if not answer.get("accepted"):
                    self.stop.set()  # the job is no longer ours
                    return
                self.sent[stream] += len(data)
                if not data or not everything:
                    break

    def _stage_out(self) -> None:
        """Uploads the outputs; the job's containers have ended, and no path is followed (staging)."""
        for name in self.spec.get("outputFiles", []):
            with staging.open_output_file(self.home, name) as handle:
                self._upload(name, handle)
        for name in self.spec.get("outputDirs", []):
            archive = staging.pack_output_dir(self.home, name, scratch=self.sandbox.fs)
            try:
                with open(archive, "rb") as handle:
                    self._upload(name, handle)
            finally:
                os.remove(archive)

    def _upload(self, name: str, handle) -> None:
        try:
            self.agent.gateway.call("PUT", f"/jobs/{self.job_id}/outputs", handle, params={**self.params, "name": name})
        except (GatewayError, OSError) as error:
            raise staging.StageError("Unable to stageout output to object storage", str(error)) from None


def main() -> None:
    parser = argparse.ArgumentParser(prog="agent", description="PROMINENCE node agent")
    parser.add_argument("--config", required=True, help="the agent's JSON config (written by the playbook)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with open(args.config) as handle:
        config = json.load(handle)
    try:
        agent = Agent(config)
    except OSError as error:  # e.g. a ca_file that cannot be read
        log.error("%s; exiting", error)
        raise SystemExit(1) from None
    raise SystemExit(agent.run())
