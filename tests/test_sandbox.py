"""A job's sandbox on the node: its own disk, network namespace and user ids, with the real
kernel pieces (loop-mounted ext4, a network namespace with slirp4netns) and real podman."""
import http.server
import os
import socket
import subprocess
import threading

import pytest

from provisioner.agent import runtime as rt
from provisioner.agent import sandbox
from tests.images import busybox_image, containers_conf

PREFIX = f"prominence-sbtest-{os.getpid()}-"


@pytest.fixture(scope="module")
def podman():
    busybox_image()
    engine = rt.Podman(containers_conf=containers_conf())
    yield engine
    engine.stop_all(PREFIX)


@pytest.fixture
def gateway():
    """Stands in for the gateway on the node's loopback."""
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"gateway says hi")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address
    server.shutdown()


# busybox's static wget crashes in this image (no NSS libraries): HTTP by hand, body only.
GET = "get() { printf 'GET %s HTTP/1.0\\r\\n\\r\\n' $3 | nc -w 5 $1 $2 | sed '1,/^\\r$/d'; }"


def mounts_below(path) -> list[str]:
    with open("/proc/self/mountinfo") as handle:
        return [line.split()[4] for line in handle if line.split()[4].startswith(str(path))]


def in_job(podman, box: sandbox.Sandbox, script: str, name: str) -> tuple[int, str]:
    spec = rt.ContainerSpec(
        name=f"{PREFIX}{name}", image=busybox_image(), argv=["sh", "-c", script],
        mounts=[(box.home, "/home/user"), (box.tmp, "/tmp")], workdir="/home/user",
        stdout_path=box.stdout, stderr_path=box.stderr, network=f"ns:{box.netns}", dns=(sandbox.SLIRP_DNS,),
        uid_base=box.uid)
    result = podman.run(spec, threading.Event(), 60)
    with open(box.stdout) as out, open(box.stderr) as err:
        return result.exit_code, out.read() + err.read()


def test_the_job_reaches_the_gateway_and_the_world_but_not_the_nodes_loopback(podman, gateway, remote, tmp_path):
    (remote.root / "page.txt").write_text("from afar")
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    box = sandbox.Sandbox.create(str(tmp_path / "job"), 1, sandbox.uid_base(7), gateway)
    try:
        box.give_to_job()
        script = (f"{GET}; get {gateway[0]} {gateway[1]} /v1 && echo; get {remote.address} 8000 /page.txt && echo; "
                  f"nc -w 2 127.0.0.1 {other.server_address[1]} </dev/null; echo other-loopback=$?; "
                  f"nc -w 2 10.0.2.2 {other.server_address[1]} </dev/null; echo host-alias=$?; "
                  "nc -w 2 169.254.169.254 80 </dev/null; echo metadata=$?")
        code, output = in_job(podman, box, script, "net")
        assert code == 0, output
        assert "gateway says hi\nfrom afar\n" in output
        assert "other-loopback=1" in output and "host-alias=1" in output and "metadata=1" in output
        # What the agent fetches for the job goes through the job's network too.
        with pytest.raises(OSError):
            box.create_connection(("127.0.0.1", other.server_address[1]), 2)
        box.create_connection((remote.address, 8000), 2).close()
    finally:
        box.close()
        other.shutdown()


def test_a_job_cannot_tie_up_the_agent_with_connections_to_the_gateway(tmp_path):
    """Each relayed connection takes a thread of the agent: a job that opens many gets only
    MAX_RELAYED at once; the others are closed at once."""
    gateway = socket.create_server(("127.0.0.1", 0), backlog=128)  # accepts, never answers
    box = sandbox.Sandbox.create(str(tmp_path / "job"), 1, sandbox.uid_base(13), gateway.getsockname())
    connections = []
    try:
        for _ in range(sandbox.MAX_RELAYED + 8):
            connection = sandbox._in_netns(box.netns, lambda: socket.socket())
            connection.settimeout(5)
            connection.connect(gateway.getsockname())
            connections.append(connection)
        refused = 0
        for connection in connections:
            connection.settimeout(0.2)
            try:
                refused += connection.recv(1) == b""
            except TimeoutError:
                pass  # relayed, waiting for the gateway
        assert refused == 8
    finally:
        for connection in connections:
            connection.close()
        box.close()
        gateway.close()


def test_the_disk_holds_what_was_asked_for_and_no_more(podman, tmp_path):
    box = sandbox.Sandbox.create(str(tmp_path / "job"), 1, sandbox.uid_base(8), None)
    try:
        box.give_to_job()
        assert not box.disk_full()
        code, output = in_job(podman, box, "dd if=/dev/zero of=/tmp/big bs=1M count=1100; echo dd=$?; "
                                           "id -u; stat -c %u /home/user", "disk")
        assert "No space left on device" in output and "dd=1" in output, output
        assert "\n0\n0\n" in output  # root inside ...
        assert os.stat(os.path.join(box.tmp, "big")).st_uid == box.uid  # ... an unprivileged uid outside
        assert box.disk_full()
    finally:
        box.close()


def test_close_and_release_leave_nothing(tmp_path, gateway):
    box = sandbox.Sandbox.create(str(tmp_path / "a"), 1, sandbox.uid_base(9), gateway)
    assert len(mounts_below(tmp_path / "a")) == 2  # the job's filesystem and its network namespace
    box.close()
    assert mounts_below(tmp_path / "a") == [] and not (tmp_path / "a").exists()
    # An agent that died leaves its sandboxes: the next one releases them.
    sandbox.Sandbox.create(str(tmp_path / "work/job-1-1"), 1, sandbox.uid_base(10), None)
    sandbox.release(str(tmp_path / "work"))
    assert mounts_below(tmp_path / "work") == [] and not (tmp_path / "work").exists()


def test_the_node_needs_the_tools(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no mkfs.ext4, no mount, no slirp4netns
    with pytest.raises(sandbox.SandboxError, match="mkfs.ext4"):
        sandbox.Sandbox.create(str(tmp_path / "job"), 1, sandbox.uid_base(11), None)
    assert not (tmp_path / "job").exists()


def test_uid_ranges_stay_in_the_unprivileged_range():
    bases = {sandbox.uid_base(job) for job in (1, 2, 32767, 10**12)}
    assert len(bases) == 4
    assert all((1 << 31) <= base and base + sandbox.UID_RANGE <= (1 << 32) - 1 for base in bases)


def test_slirp_dies_with_the_sandbox(tmp_path):
    box = sandbox.Sandbox.create(str(tmp_path / "job"), 1, sandbox.uid_base(12), None)
    pid = box._slirp.pid
    box.close()
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
