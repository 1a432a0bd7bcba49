"""The node agent's container runtime against the real podman, with the local busybox image."""

import os
import subprocess
import threading
import time

import pytest

from provisioner.agent import runtime as rt
from tests.images import busybox_image, containers_conf, podman_env

PREFIX = f"prominence-rtest-{os.getpid()}-"
_names = iter(range(1_000_000))


@pytest.fixture(scope="module")
def image() -> str:
    return busybox_image()


@pytest.fixture(scope="module")
def podman(image):
    engine = rt.Podman(containers_conf=containers_conf())
    yield engine
    engine.stop_all(PREFIX)


def podman_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True, check=False)


def spec(tmp_path, image, argv, **kw) -> rt.ContainerSpec:
    fields = {
        "name": f"{PREFIX}{next(_names)}", "image": image, "argv": argv, "env": {}, "workdir": None,
        "mounts": [], "cpus": None, "memory_mb": None, "stdout_path": str(tmp_path / "stdout"),
        "stderr_path": str(tmp_path / "stderr"),
    }
    return rt.ContainerSpec(**{**fields, **kw})


def run(podman, s, walltime=None, stop=None):
    return podman.run(s, stop or threading.Event(), walltime)


def read(path) -> str:
    with open(path) as f:
        return f.read()


def test_build_argv():
    assert rt.build_argv(None, None) is None
    assert rt.build_argv("", []) is None
    assert rt.build_argv("echo 'a b' \"c d\" $HOME", ["e f"]) == ["echo", "a b", "c d", "$HOME", "e f"]
    assert rt.build_argv(None, ["x"]) == ["x"]
    assert rt.build_argv("echo", "'a b' c") == ["echo", "a b", "c"]  # the seed's args: a string
    with pytest.raises(ValueError, match="cannot split args"):
        rt.build_argv("echo", "'unbalanced")
    with pytest.raises(ValueError, match="cannot split"):
        rt.build_argv("echo 'unbalanced", None)


def test_runtime_for(podman):
    for name in ("singularity", "docker", "podman", None):
        chosen = rt.runtime_for(name, podman)
        assert chosen is podman and chosen.name == "podman"
    with pytest.raises(rt.RuntimeUnavailable, match="udocker is not available"):
        rt.runtime_for("udocker", podman)
    with pytest.raises(rt.RuntimeUnavailable, match="unknown"):
        rt.runtime_for("lxc", podman)
    assert podman.version().split(".")[0].isdigit()


def test_exit_code_and_separate_streams(podman, image, tmp_path):
    s = spec(tmp_path, image, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    (tmp_path / "stdout").write_text("before\n")
    result = run(podman, s)
    assert result.exit_code == 7 and result.killed is None
    assert read(s.stdout_path) == "before\nout\n"  # appended, not truncated
    assert read(s.stderr_path) == "err\n"
    assert 0 <= result.wall_time < 2
    assert result.max_rss_kb > 0 and result.cpu_time > 0


def test_argv_is_not_reinterpreted_by_a_shell(podman, image, tmp_path):
    argv = rt.build_argv("""printf '%s|' 'a  b' "c'd" '$HOME' '*' ';' '`id`'""", ["e\"f"])
    result = run(podman, spec(tmp_path, image, argv))
    assert result.exit_code == 0
    assert read(tmp_path / "stdout") == "a  b|c'd|$HOME|*|;|`id`|e\"f|"


def test_env_workdir_and_mount(podman, image, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from host\n")
    os.chown(data, rt.DEFAULT_UID_BASE, rt.DEFAULT_UID_BASE)  # root of the container's user namespace
    s = spec(
        tmp_path, image,
        ["sh", "-c", 'echo "$A|$B"; pwd; cat in.txt; echo from container > out.txt'],
        env={"A": "x y", "B": "$A;`id`"}, workdir="/data", mounts=[(str(data), "/data")],
    )
    result = run(podman, s)
    assert result.exit_code == 0, read(s.stderr_path)
    assert read(s.stdout_path) == "x y|$A;`id`\n/data\nfrom host\n"
    assert (data / "out.txt").read_text() == "from container\n"


def test_default_command_of_the_image(podman, image, tmp_path):
    # argv None runs the image's CMD (sh, which exits at once on empty stdin)
    result = run(podman, spec(tmp_path, image, None))
    assert result.exit_code == 0


def test_output_is_appended_while_it_runs(podman, image, tmp_path):
    s = spec(tmp_path, image, ["sh", "-c", "echo a; echo e1 >&2; sleep 2; echo b"])
    results = []
    worker = threading.Thread(target=lambda: results.append(run(podman, s)))
    worker.start()
    deadline = time.monotonic() + 1.8
    while time.monotonic() < deadline and not (
        os.path.exists(s.stdout_path) and read(s.stdout_path) == "a\n" and read(s.stderr_path) == "e1\n"
    ):
        time.sleep(0.05)
    assert read(s.stdout_path) == "a\n" and read(s.stderr_path) == "e1\n"
    assert worker.is_alive()
    worker.join(10)
    assert results[0].exit_code == 0
    assert read(s.stdout_path) == "a\nb\n"


def test_walltime_kill(podman, image, tmp_path):
    started = time.monotonic()
    result = run(podman, spec(tmp_path, image, ["sleep", "30"]), walltime=2)
    elapsed = time.monotonic() - started
    assert result.killed == "walltime"
    assert 2 <= elapsed < 3, elapsed
    assert 1.5 <= result.wall_time < 3


def test_memory_limit_kills_the_container(podman, image, tmp_path):
    # The shell holds 100 MB in a variable: PID 1 itself is OOM-killed.
    s = spec(tmp_path, image, ["sh", "-c", "a=$(yes | head -c 100000000); echo survived"], memory_mb=32)
    result = run(podman, s)
    assert result.killed == "memory", result
    assert result.exit_code == 137
    assert "survived" not in read(s.stdout_path)
    assert 30_000 <= result.max_rss_kb <= 34_000, result


def test_memory_kill_of_a_child_process_is_reported(podman, image, tmp_path):
    # dd's 100 MB buffer: the child is OOM-killed, the main process carries on and exits 0: only the cgroup tells.
    s = spec(
        tmp_path, image,
        ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=100M count=1 2>/dev/null; echo child=$?"],
        memory_mb=32,
    )
    result = run(podman, s)
    assert read(s.stdout_path) == "child=137\n", (result, read(s.stderr_path))
    assert result.exit_code == 0 and result.killed == "memory", result


def test_stop_event(podman, image, tmp_path):
    stop = threading.Event()
    stopped_at = []
    timer = threading.Timer(1.0, lambda: (stopped_at.append(time.monotonic()), stop.set()))
    timer.start()
    result = run(podman, spec(tmp_path, image, ["sleep", "30"]), stop=stop)
    returned_at = time.monotonic()
    timer.join()
    assert result.killed == "stopped"
    assert returned_at - stopped_at[0] < 1.0, returned_at - stopped_at[0]
    assert result.wall_time < 2.5


class _Exploding(threading.Event):
    """A stop event whose check raises after a while, as if the agent's thread hit a bug."""

    def __init__(self, after: float):
        super().__init__()
        self.at = time.monotonic() + after

    def is_set(self) -> bool:
        if time.monotonic() > self.at:
            raise KeyboardInterrupt("the agent thread dies")
        return super().is_set()


def test_no_leak_when_the_calling_thread_dies(podman, image, tmp_path):
    s = spec(tmp_path, image, ["sleep", "30"])
    with pytest.raises(KeyboardInterrupt):
        run(podman, s, stop=_Exploding(1.0))
    assert s.name not in podman_cli("ps", "-a", "--format", "{{.Names}}").stdout.split()


def test_stop_before_start(podman, image, tmp_path):
    stop = threading.Event()
    stop.set()
    result = run(podman, spec(tmp_path, image, ["sleep", "30"]), stop=stop)
    assert result == rt.TaskResult(None, 0.0, 0.0, 0, "stopped")


def test_cpus_limit_and_cpu_time(podman, image, tmp_path):
    # Not `timeout` as PID 1: PID 1 of a container ignores SIGTERM, timeout's signal.
    busy = ["sh", "-c", 'timeout 1 sh -c "while :; do :; done"; echo rc=$?']  # whole seconds
    limited = run(podman, spec(tmp_path, image, busy, cpus=0.25))
    assert limited.exit_code == 0, limited
    assert 0.1 <= limited.cpu_time <= 0.45, limited
    full = run(podman, spec(tmp_path, image, busy, cpus=2))
    # A full second of cpu when the machine is quiet; other load (a second test run, a benchmark)
    # can take some of it, but never brings it down to the limited run's quarter.
    assert full.cpu_time >= 0.5, full
    assert read(tmp_path / "stdout") == "rc=143\nrc=143\n"


def test_command_not_found_is_the_tasks_failure(podman, image, tmp_path):
    s = spec(tmp_path, image, ["no-such-command", "x"])
    result = run(podman, s)
    assert result.exit_code == 127
    assert "no-such-command" in read(s.stderr_path)


def test_container_error_when_podman_cannot_start_it(podman, image, tmp_path):
    s = spec(tmp_path, image, ["true"], mounts=[(str(tmp_path / "missing"), "/data")])
    with pytest.raises(rt.ContainerError, match="no such file or directory"):
        run(podman, s)


def test_invalid_specs(podman, image, tmp_path):
    with pytest.raises(ValueError):
        run(podman, spec(tmp_path, image, ["true"], name="bad name"))
    with pytest.raises(ValueError):
        run(podman, spec(tmp_path, image, ["true"], mounts=[("/a:b", "/c")]))


def test_prepare_local_image_is_cached(podman, image):
    info = podman.prepare_image(image)
    assert info.pull_status == "cached" and info.pull_time == -1 and info.ref == image
    assert info.sha256 and len(info.sha256) == 64


def test_missing_image_fails_quickly(podman):
    # .invalid never resolves: no registry is contacted.
    started = time.monotonic()
    with pytest.raises(rt.ImageError, match="prominence-missing.invalid/nothing"):
        podman.prepare_image("prominence-missing.invalid/nothing:latest")
    assert time.monotonic() - started < 10
    with pytest.raises(rt.ImageError, match="Singularity"):
        podman.prepare_image("data/image.sif")


def test_a_path_on_the_node_is_never_an_image(podman, tmp_path):
    """A host file imported as an image would let a job read it (and podman's error named its sha256)."""
    (tmp_path / "secret.tar").write_bytes(b"not for jobs")
    for path in (str(tmp_path / "secret.tar"), "/etc/passwd", "./x.tar", "~/x.tar"):
        with pytest.raises(ValueError, match="not an image reference"):
            podman.prepare_image(path)


def test_containment(podman, image, tmp_path):
    """Root in the container is an unprivileged uid on the node, with no capability to make
    devices, mount, open raw sockets or write the image; no network unless the job's own."""
    out = tmp_path / "out"
    out.mkdir()
    os.chown(out, rt.DEFAULT_UID_BASE, rt.DEFAULT_UID_BASE)
    script = ("grep CapEff /proc/self/status; mknod /out/dev c 1 3; echo mknod=$?; "
              "mount -t tmpfs none /out; echo mount=$?; ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1; echo ping=$?; "
              "touch /etc/x; echo rootfs=$?; touch /out/mine; echo out=$?; ip -o link | wc -l")
    result = run(podman, spec(tmp_path, image, ["sh", "-c", script], mounts=[(str(out), "/out")]))
    assert result.exit_code == 0, read(tmp_path / "stderr")
    lines = read(tmp_path / "stdout").split()
    assert lines[:2] == ["CapEff:", "00000000000004fb"]  # CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID NET_BIND_SERVICE
    outcomes = dict(line.split("=") for line in lines[2:7])
    assert outcomes["out"] == "0" and "0" not in (outcomes["mknod"], outcomes["mount"], outcomes["ping"], outcomes["rootfs"])
    assert lines[7] == "1"  # only the loopback of its own network namespace
    assert os.stat(out / "mine").st_uid == rt.DEFAULT_UID_BASE
    assert not (out / "dev").exists()


def test_stop_all(podman, image, tmp_path):
    prefix = f"{PREFIX}stopall-"
    assert podman_cli("run", "-d", "--name", f"{prefix}a", image, "sleep", "30").returncode == 0
    assert podman_cli("create", "--name", f"{prefix}b", image, "true").returncode == 0
    other = f"{PREFIX}other"
    assert podman_cli("create", "--name", other, image, "true").returncode == 0
    try:
        podman.stop_all(prefix)
        names = podman_cli("ps", "-a", "--format", "{{.Names}}").stdout.split()
        assert f"{prefix}a" not in names and f"{prefix}b" not in names
        assert other in names
    finally:
        podman_cli("rm", "-f", other)


def test_a_name_can_be_run_again_at_once(podman, image, tmp_path):
    """A task retried under the same container name: the earlier container's removal finishes first."""
    s = spec(tmp_path, image, ["sh", "-c", "echo run; exit 3"])
    results = [run(podman, s) for _ in range(3)]
    assert [r.exit_code for r in results] == [3, 3, 3]
    assert all(r.cpu_time > 0 for r in results)
    assert read(tmp_path / "stdout") == "run\n" * 3


def test_no_leftovers(podman, image, tmp_path):
    """Runs last (file order): nothing left behind by the tests above, once removals settle."""
    podman.settle(PREFIX)
    names = podman_cli("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert [n for n in names if n.startswith(PREFIX)] == []
    leftovers = [
        d for d in os.listdir("/sys/fs/cgroup/memory/prominence")
        if d.startswith(PREFIX)
    ] if os.path.isdir("/sys/fs/cgroup/memory/prominence") else []
    assert leftovers == []
