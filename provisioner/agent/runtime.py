"""Container runtime of the node agent: runs one task in a container, with podman.

Standard library only (the agent is copied to nodes and run there with their python3).

Interface
---------
build_argv(cmd: str | None, args: str | list[str] | None) -> list[str] | None
    PROMINENCE `cmd` is one command line: it is split with `shlex.split` into an argv, `args` are
    appended (a string `args`, the seed's form, is split the same way), and the argv runs
    directly (never through a shell). No `cmd` and no `args` -> None, the image's default command. Shell features (pipes, `&&`, `$VAR`, globs, redirections) need an
    explicit shell: `cmd = "sh -c 'echo $HOME > out.txt'"`. An unbalanced quote -> ValueError.

runtime_for(task_runtime: str | None, podman: Podman | None = None) -> Podman
    The runtime that really runs a task that asked for `task_runtime` (DESIGN.md 3.5): "singularity"
    (the default, also "apptainer"), "docker" and "podman" -> podman; "udocker" -> RuntimeUnavailable
    (udocker cannot be installed offline, see stack-notes 6). Pass the agent's configured Podman to
    reuse it. The returned object's `.name` ("podman") and `.version()` say what ran, for the
    execution record's `runtimeVersion`. There is no apptainer/singularity runtime here: a node
    that has one still runs "singularity" tasks with podman.

write_containers_conf(path: str) -> str
    Writes the containers.conf podman needs on kernels like the CI one (runc, default ulimits;
    stack-notes 6) and returns the path. Pass it as Podman(containers_conf=...).

Podman(executable="podman", containers_conf=None, *, cgroup_root="prominence",
       pull_timeout=1800.0, walltime_grace=60.0)
    .name = "podman"
    .version() -> str                       e.g. "4.3.1"
    .prepare_image(image, credentials=None) -> ImageInfo
        A registry name already in local storage -> "cached" (pull_time -1); otherwise
        `podman pull` (bounded by pull_timeout; offline it fails within ~0.1 s) -> "completed", or
        ImageError with podman's message. A path on the node is never an image (ValueError: it
        would let a job read the node's files); `.sif`/`.simg` -> ImageError. Run the task with
        `ImageInfo.ref`. `credentials` = (username, token) for `podman pull --creds`.
    .run(spec: ContainerSpec, stop: threading.Event, walltime: float | None) -> TaskResult
        Blocks until the container exits. See "How run works" below.
    .stop_all(prefix: str) -> None
        Removes (killing first) every container whose name starts with prefix, and their leftover
        cgroup directories. Call it at agent start-up with the agent's name prefix.
    .settle(prefix: str) -> None
        Waits until the containers run so far whose names start with prefix are removed.

Exceptions: ImageError (image cannot be found/pulled/loaded), ContainerError (podman could not
create or start the container, e.g. a mount source that does not exist; the message is podman's),
RuntimeUnavailable (a task runtime this node cannot provide). Invalid specs raise ValueError.

How run works
-------------
* `podman run` in the foreground via subprocess (argv list, no shell), its stdout/stderr opened
  in append mode on spec.stdout_path / spec.stderr_path: the container's output lands there while
  it runs, stdout and stderr separate. `--log-driver none`, so podman keeps no second copy of the
  output in its storage. Podman's own error messages (e.g. "Error: statfs /x: no such file or
  directory") also land in the stderr file.
* Options: `--name`, `--pull never` (images come from prepare_image only), `--network` (none, or
  the job's own namespace `ns:<path>`, see sandbox.py), `--dns`, `--cpus`, `--memory N m` with
  `--memory-swap` equal to it (so the limit is not extended by swap), `-e K=V`, `-w`,
  `-v host:ctr` (plus `:z` only where SELinux is enabled; not needed on Debian), `--sig-proxy=false`,
  and no `--init`.
* Containment, always (DESIGN.md 3.5): a user namespace (`--uidmap/--gidmap 0:<uid_base>:65536`:
  root inside is an unprivileged uid on the node), `--cap-drop all` plus only CAPABILITIES (what
  root in an ordinary batch program uses, inside its namespace: owning and chmod-ing its files,
  switching user, signalling its processes; never mknod, mount, raw sockets, ptrace, admin),
  `no-new-privileges`, and a read-only root filesystem (as singularity's): a job writes in its
  mounts (home, /tmp) and in podman's tmpfs (/run, counted in its memory). Measured here: no
  slower than a plain `podman run`.
* argv: when given, argv[0] replaces the image's ENTRYPOINT (`--entrypoint '["argv0"]'`) and the
  rest are its arguments; the image's CMD is dropped: the semantics of `singularity exec IMAGE cmd`
  (PROMINENCE's default runtime is singularity; promlet's exact call was not checked). argv None
  runs the image's ENTRYPOINT + CMD, like `singularity run`.
* Walltime counts from when `podman run` is started (container start-up, ~0.2 s, is included).
  At walltime, or when `stop` is set, the container gets SIGKILL (`podman kill`), no grace period;
  `killed` says which. As a backstop if the agent itself dies, the container also gets podman's
  `--timeout walltime + walltime_grace` (conmon kills it then).
* The container is not started with `--rm`: after it exits we `podman inspect` it (exit code,
  start/finish times), read its cgroup figures, and then `podman rm -f` it in a background thread,
  so the ~40 ms removal does not delay the next task; `.settle(prefix)` waits for removals still
  under way (the agent calls it before it reports a job's end). If the agent's thread raises, the
  container is removed at once. If the whole agent process dies, a running container goes on until it
  exits or hits the `--timeout` backstop and stays as an exited container until stop_all at the
  next start-up.
* wall_time: the container's FinishedAt - StartedAt from podman inspect (monotonic time around
  `podman run` when the container never started).
* Measurement (cgroup v1 with podman's cgroupfs manager, as on the CI machine): each container runs
  with `--cgroup-parent /<cgroup_root>/<name>` and `--cgroups=no-conmon`, so that parent cgroup
  holds the container and nothing else (conmon and podman's clean-up process stay outside). The
  container's own cgroup disappears when it exits, but the parent keeps hierarchical totals:
  cpu_time = cpuacct.usage of the parent (user+sys, exact); max_rss_kb = the parent's
  memory.max_usage_in_bytes // 1024, i.e. the cgroup's peak charge, which includes page cache and
  kernel memory (it is not the largest process's RSS). The parent directories are removed after.
  On cgroup v2 with cgroupfs the same parent is read (cpu.stat usage_usec, memory.peak when the
  kernel has it); that path is not tested here. With podman's systemd cgroup manager or no
  writable /sys/fs/cgroup, cpu_time and max_rss_kb are 0.
* OOM (killed="memory"): podman 4.3.1 with runc on this cgroup v1 kernel reports
  State.OOMKilled=false even when the kernel OOM-killed the container (checked), so the evidence
  comes from the cgroup. v1: as soon as the container's memory cgroup appears (looked for every
  10 ms during the first seconds, then every 0.1 s), an eventfd is registered on its
  memory.oom_control through cgroup.event_control. The kernel signals it on every OOM in that
  cgroup, and once more when the cgroup is removed; a signal read while the cgroup still exists, or
  two signals in total, mean an OOM. Its `oom_kill` counter is read at each poll too. v2: the
  parent's memory.events `oom_kill` (hierarchical). Fallback, e.g. for a container that OOMs
  before its cgroup is first seen: exit code 137, not killed by us, and a memory peak within 3% of
  the limit. podman's OOMKilled is honoured too. killed="memory" is reported for any OOM kill in the
  container, also when the OOM-killed process was a child and the main process went on and exited
  otherwise (exit_code is then the main process's).
* Timing here: `podman run` + inspect + rm cost ~0.3-0.5 s per task on top of the task itself.
"""

from __future__ import annotations

import datetime
import glob
import io
import json
import math
import os
import re
import select
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field

CONTAINERS_CONF = """\
# Written by the PROMINENCE agent. podman on cgroup v1 hybrid hosts: crun cannot run there, and runc
# needs explicit default ulimits.
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""

CGROUP_FS = "/sys/fs/cgroup"
DEFAULT_UID_BASE = 1 << 31  # the start of podman's own `--userns=auto` range: no host account
CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE")
_POLL = 0.1  # seconds between checks of the container, the stop event and the walltime
_SINGULARITY_SUFFIXES = (".sif", ".simg")
LOADED_IMAGE_REPOSITORY = "localhost/prominence-upload"  # as schema/jobspec.py (the agent imports no schema)
MAX_ARCHIVE_MANIFEST = 1 << 20  # bytes of a docker-archive's manifest.json


def _rename_archive(source: str, target: str, ref: str) -> None:
    """Copy a docker-archive tar (maybe compressed) to `target` (uncompressed) with its one image
    named `ref` only. ImageError when it is not a docker-archive of exactly one image."""
    try:
        with tarfile.open(source, "r:*") as archive, tarfile.open(target, "w") as out:
            members = archive.getmembers()
            manifest = next((m for m in members if m.name.lstrip("./") == "manifest.json" and m.isfile()), None)
            if manifest is None or manifest.size > MAX_ARCHIVE_MANIFEST:
                raise ImageError("the image archive is not a docker-archive (no manifest.json): make it with "
                                 "`podman save` or `docker save`")
            try:
                entries = json.load(archive.extractfile(manifest))
            except ValueError:
                raise ImageError("the image archive's manifest.json is not JSON") from None
            if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
                raise ImageError("the image archive must hold exactly one image")
            data = json.dumps([{**entries[0], "RepoTags": [ref]}]).encode()
            for member in members:
                if member is manifest:
                    info = tarfile.TarInfo(member.name)
                    info.size, info.mode, info.mtime = len(data), 0o644, member.mtime
                    out.addfile(info, io.BytesIO(data))
                elif member.isfile():
                    out.addfile(member, archive.extractfile(member))
                elif member.isdir() or member.issym() or member.islnk():
                    out.addfile(member)
                # nothing else (devices, FIFOs) belongs in an image archive
    except (OSError, EOFError, tarfile.TarError) as error:
        raise ImageError(f"the image archive cannot be read: {error}") from None


@dataclass
class ContainerSpec:
    name: str  # unique container name, e.g. "prominence-<job>-<attempt>-<task>"
    image: str  # ImageInfo.ref from prepare_image
    argv: list[str] | None  # None: the image's default command; see build_argv
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None  # working dir inside the container
    mounts: list[tuple[str, str]] = field(default_factory=list)  # (host path, container path), rw
    cpus: float | None = None
    memory_mb: int | None = None
    stdout_path: str = "/dev/null"  # appended to while the container runs
    stderr_path: str = "/dev/null"
    network: str = "none"  # or "ns:<path>", the job's network namespace (sandbox.Sandbox.netns)
    dns: tuple[str, ...] = ()  # resolvers for the container's /etc/resolv.conf
    uid_base: int = DEFAULT_UID_BASE  # the node uid (and gid) that is root in the container


@dataclass
class TaskResult:
    exit_code: int | None  # None only when the container was never started (stopped before)
    wall_time: float  # seconds
    cpu_time: float  # seconds of CPU (user+sys) used by the container; 0 when not measurable
    max_rss_kb: int  # peak memory charged to the container's cgroup, KiB; 0 when not measurable
    killed: str | None  # None | "walltime" | "memory" | "stopped"


@dataclass
class ImageInfo:
    pull_status: str  # "completed" | "cached"
    pull_time: float  # seconds; -1 when cached (as PROMINENCE reports)
    sha256: str | None  # hex digest of the image (podman's manifest digest, else its image id)
    ref: str  # what to put in ContainerSpec.image


class ImageError(Exception):
    """The image cannot be found, pulled or loaded; the message says why."""


class ContainerError(RuntimeError):
    """podman could not create or start the container; the message is podman's."""


class RuntimeUnavailable(RuntimeError):
    """The task asked for a container runtime this node cannot provide."""


def build_argv(cmd: str | None, args: str | list[str] | None) -> list[str] | None:
    """PROMINENCE cmd/args -> argv: shlex.split(cmd) + args (a string is split the same way, a
    list is the words themselves); None when both are empty."""
    argv: list[str] = []
    for name, line in (("cmd", cmd), ("args", args if isinstance(args, str) else None)):
        try:
            argv += shlex.split(line or "")
        except ValueError as exc:
            raise ValueError(f"cannot split {name} {line!r}: {exc}") from None
    if isinstance(args, list):
        argv += [str(a) for a in args]
    return argv or None


def runtime_for(task_runtime: str | None, podman: Podman | None = None) -> Podman:
    """The runtime that really runs a task asking for `task_runtime` (see the module docstring)."""
    requested = (task_runtime or "singularity").lower()
    if requested == "udocker":
        raise RuntimeUnavailable("udocker is not available on this node")
    if requested not in ("singularity", "apptainer", "docker", "podman"):
        raise RuntimeUnavailable(f"unknown container runtime {task_runtime!r}")
    podman = podman or Podman()
    if shutil.which(podman.executable) is None:
        raise RuntimeUnavailable(f"podman ({podman.executable}) is not installed on this node")
    return podman


def write_containers_conf(path: str) -> str:
    """Write the containers.conf podman needs here (runc, default ulimits); return its path."""
    try:
        with open(path) as f:
            if f.read() == CONTAINERS_CONF:
                return path
    except OSError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w") as f:
        f.write(CONTAINERS_CONF)
    os.replace(tmp, path)
    return path


class Podman:
    name = "podman"

    def __init__(
        self,
        executable: str = "podman",
        containers_conf: str | None = None,
        *,
        cgroup_root: str = "prominence",
        pull_timeout: float = 1800.0,
        walltime_grace: float = 60.0,
    ):
        self.executable = executable
        self.containers_conf = containers_conf
        self.cgroup_root = cgroup_root.strip("/")
        self.pull_timeout = pull_timeout
        self.walltime_grace = walltime_grace
        self.env = dict(os.environ)
        if containers_conf:
            self.env["CONTAINERS_CONF"] = containers_conf
        self._version: str | None = None
        self._removals: dict[str, threading.Thread] = {}  # container name -> its removal in progress
        self._cgroup_version: str | None = None  # "v1" | "v2" | "" (not measurable)
        self._lock = threading.Lock()

    # -- small helpers ---------------------------------------------------------------------------

    def _podman(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.executable, *args],
            check=False,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _remove(self, name: str, cgroup: _ParentCgroup | None = None) -> None:
        try:
            self._podman("rm", "--force", "--ignore", "--time", "0", name, timeout=60)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if cgroup is not None:
                cgroup.close()
                cgroup.remove()
            with self._lock:
                self._removals.pop(name, None)

    def settle(self, prefix: str) -> None:
        """Wait until the containers run so far whose names start with `prefix` are removed."""
        with self._lock:
            pending = [t for name, t in self._removals.items() if name.startswith(prefix)]
        for removal in pending:
            removal.join()

    def _cgroups(self) -> str:
        with self._lock:
            if self._cgroup_version is None:
                version = ""
                try:
                    r = self._podman(
                        "info", "--format", "{{.Host.CgroupManager}} {{.Host.CgroupsVersion}}"
                    )
                    manager, _, cgv = r.stdout.strip().partition(" ")
                    if r.returncode == 0 and manager == "cgroupfs" and os.access(CGROUP_FS, os.W_OK):
                        version = cgv if cgv in ("v1", "v2") else ""
                except (OSError, subprocess.TimeoutExpired):
                    pass
                self._cgroup_version = version
            return self._cgroup_version

    # -- public interface ------------------------------------------------------------------------

    def version(self) -> str:
        if self._version is None:
            r = self._podman("version", "--format", "{{.Client.Version}}", timeout=60)
            if r.returncode != 0:
                raise RuntimeUnavailable(f"podman does not work here: {_error_text(r.stderr)}")
            self._version = r.stdout.strip()
        return self._version

    def prepare_image(self, image: str, credentials: tuple[str, str] | None = None) -> ImageInfo:
        if not image or image.startswith(("-", "/", ".", "~")):  # the description's fault, not the node's
            raise ValueError(f"{image!r} is not an image reference (a path on the node never is)")
        if image.lower().endswith(_SINGULARITY_SUFFIXES):
            raise ImageError(
                f"{image} is a Singularity image; this node runs containers with podman, which "
                "cannot run .sif/.simg images"
            )
        if (digest := self._local_digest(image)) is not None:
            return ImageInfo("cached", -1.0, digest, image)
        started = time.monotonic()
        args = ["pull", "--quiet"]
        if credentials:
            args += ["--creds", f"{credentials[0]}:{credentials[1]}"]
        try:
            r = self._podman(*args, image, timeout=self.pull_timeout)
        except subprocess.TimeoutExpired:
            raise ImageError(f"pulling image {image} took more than {self.pull_timeout:g} s") from None
        if r.returncode != 0:
            raise ImageError(f"cannot pull image {image}: {_error_text(r.stderr)}")
        return ImageInfo("completed", time.monotonic() - started, self._local_digest(image), image)

    def load_archive(self, path: str, sha256: str) -> ImageInfo:
        """An uploaded image archive (`podman save`/`docker save`, a docker-archive tar, maybe
        gzipped) at `path`, an agent-owned file: loaded with `podman load` under the name
        `localhost/prominence-upload:<sha256 of the archive>`, whatever names the archive gives
        itself (so no upload can replace an image other jobs use by name, e.g. busybox).
        Already loaded (the same bytes) -> "cached"."""
        ref = f"{LOADED_IMAGE_REPOSITORY}:{sha256}"
        if (digest := self._local_digest(ref)) is not None:
            return ImageInfo("cached", -1.0, digest, ref)
        started = time.monotonic()
        renamed = path + ".load.tar"
        try:
            _rename_archive(path, renamed, ref)
            try:
                r = self._podman("load", "--quiet", "--input", renamed, timeout=self.pull_timeout)
            except subprocess.TimeoutExpired:
                raise ImageError(f"loading the image archive took more than {self.pull_timeout:g} s") from None
        finally:
            if os.path.exists(renamed):
                os.remove(renamed)
        if r.returncode != 0:
            raise ImageError(f"cannot load the image archive: {_error_text(r.stderr)}")
        digest = self._local_digest(ref)
        if digest is None:
            raise ImageError(f"the image archive did not load as {ref}")
        return ImageInfo("completed", time.monotonic() - started, digest, ref)

    def run(self, spec: ContainerSpec, stop: threading.Event, walltime: float | None) -> TaskResult:
        command = self._run_command(spec, walltime)
        if stop.is_set():
            return TaskResult(None, 0.0, 0.0, 0, "stopped")
        self.settle(spec.name)  # a name (and its cgroup) is free again once the last holder is removed
        cgroup = _ParentCgroup(self._cgroups(), f"{self.cgroup_root}/{spec.name}")
        cgroup.remove()  # a leftover of an earlier run with this name would spoil the figures
        if cgroup.version:
            command[2:2] = ["--cgroup-parent", "/" + cgroup.rel, "--cgroups=no-conmon"]
        with open(spec.stdout_path, "ab") as out, open(spec.stderr_path, "ab") as err:
            err_offset = err.tell()
            started = time.monotonic()
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=self.env,
                start_new_session=True,
                # conmon leaves a file named `oom` in its working directory after an OOM kill:
                # keep it beside the task's output, not wherever the agent was started.
                cwd=tempfile.gettempdir() if spec.stdout_path == os.devnull
                else os.path.dirname(os.path.abspath(spec.stdout_path)),
            )
        killed: str | None = None
        exited = _ExitWaiter(proc)
        try:
            deadline = None if walltime is None else started + walltime
            kill_sent = 0.0
            while True:
                # Look for the container's cgroup often at first, to watch it for OOM early.
                early = cgroup.watching is False and time.monotonic() - started < 3
                if exited(0.01 if early else _POLL):
                    break
                cgroup.poll()
                now = time.monotonic()
                if killed is None:
                    if stop.is_set():
                        killed = "stopped"
                    elif deadline is not None and now >= deadline:
                        killed = "walltime"
                if killed and now - kill_sent > 1.0:
                    kill_sent = now
                    self._podman("kill", "--signal", "KILL", spec.name, timeout=30)
            ended = time.monotonic()
            cgroup.poll()
            state = self._inspect(spec.name)
            cpu_time, peak_bytes, oom = cgroup.finish()
        except BaseException:
            self._remove(spec.name, cgroup)
            proc.kill()
            proc.wait()
            raise
        finally:
            exited.close()
        # The figures are read: removing the container (~40 ms) need not delay the next task.
        removal = threading.Thread(target=self._remove, args=(spec.name, cgroup), daemon=True)
        with self._lock:
            self._removals[spec.name] = removal
        removal.start()

        rc = proc.returncode
        ran = state is not None and _started(state)
        if rc == 125 and not ran:
            raise ContainerError(
                f"podman could not start container {spec.name}: "
                f"{_error_text(_read_from(spec.stderr_path, err_offset))}"
            )
        # Not started with 126/127 ("executable file not found"): the task's own failure. No state
        # at all: the container was removed under us (e.g. `podman rm -f`); rc is podman's then.
        exit_code = state.get("ExitCode", rc) if ran else rc
        wall = _duration(state.get("StartedAt"), state.get("FinishedAt")) if ran else None
        if wall is None:
            wall = ended - started
        if killed is None and (
            oom
            or (state or {}).get("OOMKilled")
            or (exit_code == 137 and spec.memory_mb and peak_bytes >= 0.97 * spec.memory_mb * 1024 * 1024)
        ):
            killed = "memory"
        return TaskResult(exit_code, wall, cpu_time, peak_bytes // 1024, killed)

    def stop_all(self, prefix: str) -> None:
        if not prefix:
            raise ValueError("stop_all needs a non-empty name prefix")
        r = self._podman("ps", "--all", "--format", "{{.Names}}", timeout=60)
        names = [n for n in r.stdout.split() if n.startswith(prefix)]
        if names:
            self._podman("rm", "--force", "--ignore", "--time", "0", *names, timeout=120)
        version = self._cgroups()
        if version:
            for path in glob.glob(os.path.join(_cgroup_dir(version, "memory"), self.cgroup_root, glob.escape(prefix) + "*")):
                _ParentCgroup(version, f"{self.cgroup_root}/{os.path.basename(path)}").remove()

    # -- internals -------------------------------------------------------------------------------

    def _run_command(self, spec: ContainerSpec, walltime: float | None) -> list[str]:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", spec.name or ""):
            raise ValueError(f"invalid container name {spec.name!r}")
        if not spec.image or spec.image.startswith("-"):
            raise ValueError(f"invalid image {spec.image!r}")
        command = [
            self.executable, "run", "--name", spec.name, "--pull", "never",
            "--log-driver", "none", "--sig-proxy=false", "--network", spec.network,
            "--read-only", "--cap-drop", "all", "--cap-add", ",".join(CAPABILITIES),
            "--security-opt", "no-new-privileges",
            "--uidmap", f"0:{int(spec.uid_base)}:65536", "--gidmap", f"0:{int(spec.uid_base)}:65536",
        ]
        for server in spec.dns:
            command += ["--dns", server]
        if spec.cpus is not None:
            command += ["--cpus", f"{float(spec.cpus):g}"]
        if spec.memory_mb is not None:
            command += ["--memory", f"{int(spec.memory_mb)}m", "--memory-swap", f"{int(spec.memory_mb)}m"]
        if walltime is not None:
            command += ["--timeout", str(max(1, math.ceil(walltime + self.walltime_grace)))]
        if spec.workdir:
            command += ["--workdir", spec.workdir]
        for key, value in spec.env.items():
            if not key or "=" in key:
                raise ValueError(f"invalid environment variable name {key!r}")
            command += ["--env", f"{key}={value}"]
        relabel = ":z" if os.path.exists("/sys/fs/selinux/enforce") else ""
        for host, ctr in spec.mounts:
            if ":" in host or ":" in ctr or not os.path.isabs(host) or not ctr.startswith("/"):
                raise ValueError(f"invalid mount {host!r} -> {ctr!r}")
            command += ["--volume", f"{host}:{ctr}{relabel}"]
        if spec.argv:
            command += ["--entrypoint", json.dumps([spec.argv[0]]), spec.image, *spec.argv[1:]]
        else:
            command.append(spec.image)
        return command

    def _inspect(self, name: str) -> dict | None:
        r = self._podman("container", "inspect", "--format", "json", name, timeout=60)
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)[0]["State"]
        except (ValueError, LookupError, TypeError):
            return None

    def _local_digest(self, ref: str) -> str | None:
        """The digest of an image in local storage; None when it is not there (one podman call)."""
        r = self._podman("image", "inspect", "--format", "json", ref, timeout=60)
        if r.returncode != 0:
            return None
        try:
            data = json.loads(r.stdout)[0]
        except (ValueError, LookupError, TypeError):
            return None
        digest = data.get("Digest") or data.get("Id") or ""
        return digest.removeprefix("sha256:") or None


class _ParentCgroup:
    """The cgroup podman creates for `--cgroup-parent /<rel>`: it holds one container only."""

    def __init__(self, version: str, rel: str):
        self.version = version
        self.rel = rel
        self._efd: int | None = None
        self._control_fd: int | None = None
        self._child: str | None = None
        self._oom = False
        self._signals = 0

    def _file(self, controller: str, name: str) -> str:
        return os.path.join(_cgroup_dir(self.version, controller), self.rel, name)

    @property
    def watching(self) -> bool | None:
        """None: nothing to watch (not v1); False: container cgroup not found yet; True: found."""
        return None if self.version != "v1" else self._child is not None

    def poll(self) -> None:
        """v1: find the container's memory cgroup, watch it for OOM (see the module docstring)."""
        if self.version != "v1":
            return
        if self._child is None:
            children = glob.glob(os.path.join(CGROUP_FS, "memory", self.rel, "libpod-*"))
            if not children:
                return
            self._child = children[0]
            self._watch_oom()
        self._read_signals()
        try:
            with open(os.path.join(self._child, "memory.oom_control")) as f:
                if _keyed(f.read()).get("oom_kill", 0) > 0:
                    self._oom = True
        except OSError:
            pass

    def _watch_oom(self) -> None:
        try:
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        except (AttributeError, OSError):
            return
        try:
            control = os.open(os.path.join(self._child, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(efd)
            return
        try:
            with open(os.path.join(self._child, "cgroup.event_control"), "w") as f:
                f.write(f"{efd} {control}")
        except OSError:
            os.close(efd)
            os.close(control)
            return
        self._efd, self._control_fd = efd, control

    def _read_signals(self) -> None:
        if self._efd is None:
            return
        try:
            count = os.eventfd_read(self._efd)
        except BlockingIOError:
            return
        except OSError:
            return
        # An OOM signal arrives while the cgroup exists; the removal signal only after rmdir.
        if os.path.isdir(self._child):
            self._oom = True
        self._signals += count
        if self._signals >= 2:
            self._oom = True

    def finish(self) -> tuple[float, int, bool]:
        """(cpu seconds, peak memory bytes, OOM seen), once the container has exited."""
        cpu, peak = 0.0, 0
        if self.version == "v1":
            # Called after `podman rm`: the removal signal has long arrived (see the module docstring).
            self._read_signals()
            cpu = _read_int(self._file("cpuacct", "cpuacct.usage")) / 1e9
            peak = _read_int(self._file("memory", "memory.max_usage_in_bytes"))
        elif self.version == "v2":
            try:
                with open(self._file("", "cpu.stat")) as f:
                    cpu = _keyed(f.read()).get("usage_usec", 0) / 1e6
                with open(self._file("", "memory.events")) as f:
                    if _keyed(f.read()).get("oom_kill", 0) > 0:
                        self._oom = True
            except OSError:
                pass
            peak = _read_int(self._file("", "memory.peak"))
        return cpu, peak, self._oom

    def close(self) -> None:
        for fd in (self._efd, self._control_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._efd = self._control_fd = None

    def remove(self) -> None:
        """rmdir the parent (and any empty children) in every hierarchy; best effort."""
        if not self.version:
            return
        try:
            hierarchies = [
                d for d in os.listdir(CGROUP_FS)
                if os.path.isdir(os.path.join(CGROUP_FS, d)) and not os.path.islink(os.path.join(CGROUP_FS, d))
            ]
        except OSError:
            return
        roots = [os.path.join(CGROUP_FS, self.rel)] if self.version == "v2" else [
            os.path.join(CGROUP_FS, h, self.rel) for h in hierarchies
        ]
        for root in roots:
            for attempt in range(20):
                if not os.path.isdir(root):
                    break
                try:
                    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda w: -len(w[0])):
                        os.rmdir(dirpath)
                    break
                except OSError:
                    time.sleep(0.05)  # the container's cgroup may still be going away


class _ExitWaiter:
    """`waiter(timeout) -> bool` returns as soon as the process exits. With a pidfd the wake-up is
    immediate; Popen.wait(timeout) notices up to 50 ms late (it sleeps between polls)."""

    def __init__(self, proc: subprocess.Popen):
        self._proc = proc
        try:
            self._pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self._pidfd = None

    def __call__(self, timeout: float) -> bool:
        if self._pidfd is None:
            try:
                self._proc.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        select.select([self._pidfd], [], [], timeout)
        return self._proc.poll() is not None

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _cgroup_dir(version: str, controller: str) -> str:
    return CGROUP_FS if version == "v2" else os.path.join(CGROUP_FS, controller)


def _read_int(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _keyed(text: str) -> dict[str, int]:
    values = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            values[parts[0]] = int(parts[1])
    return values


def _error_text(stderr: str) -> str:
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error")]
    return "; ".join(errors or lines[-3:]) or "no message from podman"


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(65536).decode("utf-8", "replace")
    except OSError:
        return ""


def _parse_time(value: str | None) -> datetime.datetime | None:
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?", value or "")
    if not match or match.group(1).startswith("0001-"):
        return None
    fraction = "." + (match.group(2) or "0")[:6].ljust(6, "0")
    zone = "+00:00" if match.group(3) in (None, "Z") else match.group(3)
    return datetime.datetime.fromisoformat(match.group(1) + fraction + zone)


def _started(state: dict) -> bool:
    return _parse_time(state.get("StartedAt")) is not None


def _duration(start: str | None, end: str | None) -> float | None:
    a, b = _parse_time(start), _parse_time(end)
    if a is None or b is None or b < a:
        return None
    return (b - a).total_seconds()
