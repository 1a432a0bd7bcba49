"""Real services the tests use, started here when the machine does not already run them.

PostgreSQL: Debian's server binaries, a private cluster in a temporary directory on a free port,
started with pg_ctl (no systemd on CI machines). initdb and pg_ctl refuse to run as root, so as
root they run as the `postgres` user.

sshd: Debian's openssh-server on a free port of 127.0.0.1, for configuring nodes over SSH.
"""
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries are missing: run `make test`, which installs them")
    return Path(found[-1]).parent


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@contextmanager
def postgres_server():
    """Yields a base URL like postgresql+psycopg://postgres@127.0.0.1:PORT (no database name)."""
    if url := os.environ.get("PROMINENCE_TEST_POSTGRES_URL"):
        yield url.rstrip("/")
        return
    bin_dir = _postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="prominence-pg-"))
    data, log = root / "data", root / "log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                 "--no-sync"]), check=True, capture_output=True)
    port = free_port()
    options = f"-p {port} -h 127.0.0.1 -k {root} -c fsync=on -c max_connections=200"
    subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                                 "-w", "start"]), check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def create_database(base_url: str, name: str) -> str:
    import psycopg

    dsn = base_url.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{base_url}/{name}"


# --- sshd -------------------------------------------------------------------------------------
# Debian's openssh-server, a private sshd on a free port of 127.0.0.1 with its own host key,
# config, pid file and log under ``root`` (stack-notes 5). Never the system sshd on port 22.
SSHD = Path("/usr/sbin/sshd")


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    key_file: Path  # the client's private key, authorised for ``user``
    log: Path
    pid_file: Path  # the listening sshd's pid


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@contextmanager
def sshd_server(root: Path, timeout: float = 15):
    """Yields an SshServer: sshd listening on 127.0.0.1:<free port>, accepting root with a key."""
    if not SSHD.exists():
        raise RuntimeError(f"{SSHD} is missing: run `make test`, which installs openssh-server")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation directory
    host_key, client_key = root / "host_ed25519", root / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "prominence-test", "-f", str(key)],
                       check=True, capture_output=True)
    authorized = root / "authorized_keys"
    authorized.write_text(Path(f"{client_key}.pub").read_text())
    authorized.chmod(0o600)
    port = free_port()
    config, log, pid_file = root / "sshd_config", root / "sshd.log", root / "sshd.pid"
    config.write_text(
        f"Port {port}\n"
        "ListenAddress 127.0.0.1\n"
        f"HostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\n"
        f"PidFile {pid_file}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"  # the files sit under /tmp (mode 1777)
        "Subsystem sftp internal-sftp\n"
    )
    started = subprocess.run([str(SSHD), "-f", str(config), "-E", str(log)], capture_output=True, text=True)
    if started.returncode != 0:
        raise RuntimeError(f"sshd did not start (rc={started.returncode}): {started.stderr.strip()} "
                           f"{log.read_text() if log.exists() else ''}")
    try:
        deadline = time.monotonic() + timeout
        while not (pid_file.exists() and _port_answers("127.0.0.1", port)):
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not answer on 127.0.0.1:{port} within {timeout} s: "
                                   f"{log.read_text() if log.exists() else ''}")
            time.sleep(0.05)
        yield SshServer(host="127.0.0.1", port=port, user="root", key_file=client_key, log=log, pid_file=pid_file)
    finally:
        _stop_sshd(pid_file)


def _stop_sshd(pid_file: Path) -> None:
    """Stops the listening sshd (its pid file's pid); sessions it forked end with their clients."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if pid <= 1:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- a remote host ----------------------------------------------------------------------------
# A "machine elsewhere on the network" for jobs' outbound connections: a network namespace made
# here, joined to this machine by a veth pair on a private /30, with an HTTP server in it. Jobs
# reach it through their own network (slirp4netns), as they would reach a server on the internet;
# no traffic leaves this machine.


@dataclass
class RemoteHost:
    address: str  # the host's address, e.g. 10.213.7.2
    url: str  # its HTTP server, serving `root`
    root: Path


@contextmanager
def remote_host(root: Path):
    """Yields a RemoteHost serving the files of `root` over HTTP from its own network namespace."""
    import random

    name = f"prominence-remote-{os.getpid()}-{random.randrange(1 << 16)}"
    subnet = random.randrange(256)
    outside, inside = f"{name[-8:]}o", f"{name[-8:]}i"
    host, local = f"10.213.{subnet}.2", f"10.213.{subnet}.1"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", name)
    server = None
    try:
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", name)
        ip("addr", "add", f"{local}/30", "dev", outside)
        ip("link", "set", outside, "up")
        ip("-n", name, "addr", "add", f"{host}/30", "dev", inside)
        ip("-n", name, "link", "set", inside, "up")
        ip("-n", name, "link", "set", "lo", "up")
        port = 8000
        server = subprocess.Popen(["ip", "netns", "exec", name, "python3", "-m", "http.server", "--bind", host,
                                   "--directory", str(root), str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the remote host's HTTP server did not start on {host}:{port}")
                time.sleep(0.05)
        yield RemoteHost(host, f"http://{host}:{port}", Path(root))
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        subprocess.run(["ip", "link", "del", outside], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
