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
from dataclasses import dataclass, field
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
    # Extra loopback addresses it also listens on (sshd_server(addresses=...)), and the pid files of
    # the further sshd daemons that serve them (one sshd listens on at most 16 sockets).
    addresses: list[str] = field(default_factory=list)
    extra_pid_files: list[Path] = field(default_factory=list)


def _port_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@contextmanager
def sshd_server(root: Path, timeout: float = 15, addresses: list[str] | None = None):
    """Yields an SshServer: sshd listening on 127.0.0.1:<free port>, accepting root with a key.

    ``addresses``: further loopback addresses (127.x.y.z, e.g. ``subnet_host_addresses("127.0.8.0/24")``,
    where moto puts EC2 instances) on which the same port also answers, with the same host key and
    the same authorised client key. OpenSSH listens on at most 16 sockets per daemon
    (MAX_LISTEN_SOCKS), so addresses past the first 15 are served by further sshd daemons, all
    stopped at exit. Only loopback addresses are accepted: never 0.0.0.0.
    """
    extra = _loopback_addresses(addresses)
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
        # one sshd stands for many machines: a batch of nodes configured at once (one ansible
        # fork each) must not meet sshd's default limit of 10 unauthenticated connections
        "MaxStartups 200\n"
    )
    # The first daemon: 127.0.0.1 and up to 15 extra addresses; each further one: up to 16 more.
    groups = [extra[:15]] + [extra[i:i + 16] for i in range(15, len(extra), 16)]
    template = config.read_text()
    daemons: list[tuple[Path, Path, list[str]]] = []  # (pid file, log, addresses it listens on)
    try:
        for n, group in enumerate(groups):
            listen = (["127.0.0.1"] if n == 0 else []) + group
            if not listen:
                continue
            cfg = config if n == 0 else root / f"sshd_config.{n}"
            daemon_log = log if n == 0 else root / f"sshd.{n}.log"
            daemon_pid = pid_file if n == 0 else root / f"sshd.{n}.pid"
            cfg.write_text(template.replace(
                "ListenAddress 127.0.0.1\n", "".join(f"ListenAddress {a}\n" for a in listen)).replace(
                f"PidFile {pid_file}\n", f"PidFile {daemon_pid}\n"))
            daemons.append((daemon_pid, daemon_log, listen))
            started = subprocess.run([str(SSHD), "-f", str(cfg), "-E", str(daemon_log)], check=False,
                                     capture_output=True, text=True)
            if started.returncode != 0:
                raise RuntimeError(f"sshd did not start (rc={started.returncode}): {started.stderr.strip()} "
                                   f"{daemon_log.read_text() if daemon_log.exists() else ''}")
        deadline = time.monotonic() + timeout
        for daemon_pid, daemon_log, listen in daemons:
            for address in listen:
                while not (daemon_pid.exists() and _port_answers(address, port)):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"sshd did not answer on {address}:{port} within {timeout} s: "
                                           f"{daemon_log.read_text() if daemon_log.exists() else ''}")
                    time.sleep(0.05)
        yield SshServer(host="127.0.0.1", port=port, user="root", key_file=client_key, log=log, pid_file=pid_file,
                        addresses=extra, extra_pid_files=[d[0] for d in daemons[1:]])
    finally:
        if len(daemons) > 1:  # signal every daemon first, so that their waits overlap
            for daemon_pid, _, _ in daemons:
                try:
                    pid = int(daemon_pid.read_text().split()[0])
                    if pid > 1:
                        os.kill(pid, signal.SIGTERM)
                except (OSError, ValueError, IndexError):
                    pass
        for daemon_pid, _, _ in reversed(daemons):
            _stop_sshd(daemon_pid)


def _loopback_addresses(addresses: list[str] | None) -> list[str]:
    """The distinct extra addresses, 127.0.0.1 left out; raises on any non-loopback address."""
    import ipaddress

    result: list[str] = []
    for address in addresses or []:
        ip = ipaddress.ip_address(address)
        if ip.version != 4 or not ip.is_loopback:
            raise ValueError(f"sshd_server listens on loopback addresses only (127.0.0.0/8), not {address!r}")
        if str(ip) != "127.0.0.1" and str(ip) not in result:
            result.append(str(ip))
    return result


def subnet_host_addresses(cidr: str = "127.0.8.0/24", count: int = 40) -> list[str]:
    """The first ``count`` addresses EC2 (and moto) hands to instances in subnet ``cidr``.

    AWS reserves the network address and the next three (.0 to .3) of every subnet, and moto 5.2
    assigns private IPs in order from the fourth host on: in 127.0.8.0/24 the first instance gets
    127.0.8.4, the next 127.0.8.5, and so on (terminated instances do not give theirs back until a
    reset). For ``sshd_server(..., addresses=subnet_host_addresses())``.
    """
    import ipaddress

    hosts = list(ipaddress.ip_network(cidr).hosts())[3:-1]  # .1-.3 and the last are reserved
    return [str(ip) for ip in hosts[:count]]


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


# --- EC2: moto's server behind a proxy the tests own ---------------------------------------------
# The product talks to "EC2" with libcloud's own, unmodified EC2 driver; the tests point it at
#   libcloud EC2NodeDriver --HTTP--> Ec2Proxy (127.0.0.1:P) --HTTP--> moto_server (127.0.0.1:M)
# moto (its own venv, .venv-moto, made by `make test`: moto pulls botocore, which would downgrade
# python-dateutil in the app's venv) is a real EC2 API server. The proxy forwards every request
# unchanged and changes answers in two ways only: moto's XML namespace becomes the one libcloud
# expects (stack-notes 4), and faults the test asks for (quota, image, API errors, delays) answer
# instead of moto.
#
# A cloud record points at it like this (see Ec2World.driver_args / create_options):
#   provider "ec2"; driver args {"host": "127.0.0.1", "port": <proxy port>, "secure": false,
#   "signature_version": "4", "region": "us-east-1"}; credentials key "testing", secret "testing";
#   create options {"ex_subnet": {"id": <subnet id>}} (libcloud's create_node reads only
#   ``ex_subnet.id``: pass an EC2NetworkSubnet or any object with ``.id``); image <image id>;
#   ssh user root, ssh port <sshd port> (sshd_server(..., addresses=subnet_host_addresses())).
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parent.parent
MOTO_SERVER = REPO / ".venv-moto" / "bin" / "moto_server"
EC2_KEY, EC2_SECRET, EC2_REGION = "testing", "testing", "us-east-1"


def moto_server_binary() -> Path:
    """moto_server: $PROMINENCE_TEST_MOTO_SERVER, else <repo>/.venv-moto/bin/moto_server."""
    binary = Path(os.environ.get("PROMINENCE_TEST_MOTO_SERVER") or MOTO_SERVER)
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: run `make test`, which installs moto[server] in .venv-moto "
                           "(or set PROMINENCE_TEST_MOTO_SERVER to a moto_server binary)")
    return binary


def _http(url: str, method: str = "GET", path: str = "/", body: bytes | None = None,
          timeout: float = 10) -> tuple[int, bytes]:
    import http.client

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@contextmanager
def moto_server(timeout: float = 30):
    """Yields the URL (http://127.0.0.1:PORT) of a moto_server started on a free port; stops it at exit.

    moto keeps all state in memory: ``moto_reset(url)`` (POST /moto-api/reset) empties it. The
    server accepts any credentials (use key "testing", secret "testing") and does not check
    signatures, but libcloud must sign with SigV4 (``signature_version="4"``): moto routes
    libcloud's default SigV2 requests to S3. Never skipped: raises if moto is not installed.
    """
    binary = moto_server_binary()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fd, log = tempfile.mkstemp(prefix="prominence-moto-", suffix=".log")
    try:
        process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)], stdin=subprocess.DEVNULL,
                                   stdout=fd, stderr=subprocess.STDOUT)
    finally:
        os.close(fd)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _http(url, path="/moto-api/", timeout=1)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {url} within {timeout} s: "
                                       f"{Path(log).read_text(errors='replace')}")
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.unlink(log)


def moto_reset(url: str) -> None:
    """Forgets everything moto holds (instances, VPCs, key pairs...): POST /moto-api/reset."""
    status, body = _http(url, "POST", "/moto-api/reset")
    if status != 200:
        raise RuntimeError(f"moto reset failed: {status} {body[:200]!r}")


_EC2_NAMESPACE = re.compile(rb'xmlns="http://ec2\.amazonaws\.com/doc/[^"]*"')
_ERROR_RESPONSE_NAMESPACE = re.compile(rb'<Response\s+xmlns="[^"]*"\s*>')
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
               "transfer-encoding", "upgrade", "content-length"}


@dataclass
class _Fault:
    code: str
    message: str
    status: int
    times: int | None  # None: every request


class Ec2Proxy:
    """A small threaded HTTP proxy on 127.0.0.1:<free port> in front of moto, owned by the tests.

    Requests go to moto unchanged. Answers change only as follows:
      * successful EC2 XML: ``xmlns="http://ec2.amazonaws.com/doc/<anything>"`` becomes libcloud's
        ``libcloud.compute.drivers.ec2.NAMESPACE`` (moto 5.2 writes ``.../2016-11-15`` without the
        trailing slash, so libcloud's XPath finds nothing: empty lists, None fields);
      * error answers: the ``xmlns`` of the top ``<Response>`` is dropped, so libcloud's
        EC2Response.parse_error finds ``Errors/Error`` and reports "Code: Message";
      * injected faults (below) answer instead of moto.
    Content-Length is set on every answer after rewriting.

    Fault injection, by EC2 ``Action`` (query string or form body), thread safe:
      ``fail(action, code, message, status=400, times=None)``: answer EC2 error XML with ``code`` and
        ``message`` and HTTP ``status``, the next ``times`` requests (None: until ``clear()``).
        Realistic codes: quota ``InstanceLimitExceeded`` / ``VcpuLimitExceeded`` (400), image
        ``InvalidAMIID.NotFound`` (400), API failure ``InternalError`` with status 500.
      ``delay(action, seconds)``: wait that long before answering (a driver made with a shorter
        ``timeout`` raises a timeout); ``clear()`` ends all faults, delays and pending waits.
      ``calls``: a Counter of requests per action, e.g. ``calls["RunInstances"]`` (faulted ones too).

    Use as a context manager or ``start()`` / ``stop()``; ``url`` and ``port`` say where it listens.
    """

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.calls: Counter[str] = Counter()
        self._faults: dict[str, _Fault] = {}
        self._delays: dict[str, float] = {}
        self._lock = threading.Lock()
        self._cleared = threading.Event()  # set by clear()/stop(): ends pending delays early
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- the tests' controls --
    def fail(self, action: str, code: str, message: str, status: int = 400, times: int | None = None) -> None:
        with self._lock:
            self._faults[action] = _Fault(code, message, status, times)

    def delay(self, action: str, seconds: float) -> None:
        with self._lock:
            self._delays[action] = seconds
            self._cleared.clear()

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._delays.clear()
            self.calls.clear()
            self._cleared.set()

    def count(self, action: str) -> int:
        with self._lock:
            return self.calls[action]

    # -- life cycle --
    def start(self) -> Self:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                proxy._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="ec2-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._cleared.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- one request --
    @staticmethod
    def _action(handler: BaseHTTPRequestHandler, body: bytes) -> str | None:
        actions = parse_qs(urlsplit(handler.path).query).get("Action")
        content_type = handler.headers.get("Content-Type", "")
        if not actions and body and "x-www-form-urlencoded" in content_type:
            actions = parse_qs(body.decode("utf-8", "replace")).get("Action")
        return actions[0] if actions else None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        import http.client

        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        action = self._action(handler, body)
        fault = None
        wait = 0.0
        with self._lock:
            if action:
                self.calls[action] += 1
                fault = self._faults.get(action)
                if fault is not None and fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        del self._faults[action]
                wait = self._delays.get(action, 0.0)
        if wait:
            self._cleared.wait(wait)
        if fault is not None:
            status = fault.status
            payload = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{_xml(fault.code)}'
                       f"</Code><Message>{_xml(fault.message)}</Message></Error></Errors>"
                       "<RequestID>x</RequestID></Response>").encode()
            headers = [("Content-Type", "text/xml;charset=UTF-8")]
        else:
            parts = urlsplit(self.upstream)
            upstream = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
            try:
                forward = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(handler.command, handler.path, body=body if body else None, headers=forward)
                answer = upstream.getresponse()
                status, payload = answer.status, answer.read()
                headers = [(k, v) for k, v in answer.getheaders() if k.lower() not in _HOP_BY_HOP]
            except OSError as error:
                status, headers = 502, [("Content-Type", "text/plain")]
                payload = f"Ec2Proxy: moto did not answer: {error}".encode()
            finally:
                upstream.close()
            payload = self._rewrite(status, payload)
        try:
            handler.send_response(status)
            for key, value in headers:
                handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(payload)
        except OSError:  # the client gave up (e.g. its timeout during a delay)
            handler.close_connection = True

    @staticmethod
    def _rewrite(status: int, payload: bytes) -> bytes:
        from libcloud.compute.drivers.ec2 import NAMESPACE

        if b"<" not in payload[:200]:
            return payload
        if 200 <= status < 300:
            return _EC2_NAMESPACE.sub(f'xmlns="{NAMESPACE}"'.encode(), payload)
        return _ERROR_RESPONSE_NAMESPACE.sub(b"<Response>", payload, count=1)


def _xml(text: str) -> str:
    from xml.sax.saxutils import escape

    return escape(str(text))


@dataclass
class Ec2World:
    """What a cloud record needs to run instances on moto's EC2 through an Ec2Proxy.

    Made by ``prepare_ec2_world(proxy_url)``. Instances launched with ``create_options()`` land in
    ``subnet_id`` (``subnet_cidr`` on this machine's loopback: 127.0.8.4, .5, ...), reachable by an
    sshd started with ``sshd_server(root, addresses=subnet_host_addresses(world.subnet_cidr))``.
    They have no public IP: wait with ``wait_until_running(..., ssh_interface="private_ips")``.

    A cloud record: provider "ec2", driver args ``driver_args`` ({"host": "127.0.0.1", "port":
    <proxy port>, "secure": false, "signature_version": "4", "region": "us-east-1"}), credentials
    key "testing" / secret "testing", create options {"ex_subnet": {"id": <subnet id>}}, image
    ``image_id``, ssh user root, ssh port <sshd port>.
    """

    url: str  # the proxy's URL
    vpc_id: str
    subnet_id: str
    subnet_cidr: str
    availability_zone: str
    image_id: str
    size_id: str = "t2.micro"
    region: str = EC2_REGION
    key: str = EC2_KEY
    secret: str = EC2_SECRET

    @property
    def driver_args(self) -> dict:
        return {"host": "127.0.0.1", "port": urlsplit(self.url).port, "secure": False, "signature_version": "4",
                "region": self.region}

    def driver(self, **kwargs):
        """libcloud's stock EC2 driver (``get_driver("ec2")``) pointed at the proxy; kwargs e.g. timeout=1."""
        return ec2_driver(self.url, key=self.key, secret=self.secret, region=self.region, **kwargs)

    def subnet(self):
        """An EC2NetworkSubnet with this subnet's id, for create_node(ex_subnet=...)."""
        from libcloud.compute.drivers.ec2 import EC2NetworkSubnet

        return EC2NetworkSubnet(self.subnet_id, "prominence-test", "available")

    def create_options(self) -> dict:
        """create_node keyword arguments that put an instance in the subnet."""
        return {"ex_subnet": self.subnet()}


def ec2_driver(url: str, key: str = EC2_KEY, secret: str = EC2_SECRET, region: str = EC2_REGION, **kwargs):
    """``get_driver("ec2")(key, secret, region=, host=, port=, secure=False, signature_version="4")`` for ``url``."""
    from libcloud.compute.providers import get_driver

    parts = urlsplit(url)
    return get_driver("ec2")(key, secret, region=region, host=parts.hostname, port=parts.port, secure=False,
                             signature_version="4", **kwargs)


def prepare_ec2_world(url: str, vpc_cidr: str = "127.0.0.0/16", subnet_cidr: str = "127.0.8.0/24",
                      availability_zone: str = "us-east-1a", reset: bool = True) -> Ec2World:
    """Resets moto (through ``url``: the proxy or moto itself) and makes a VPC and a subnet on loopback.

    The VPC (``vpc_cidr``) and subnet (``subnet_cidr``) are created with libcloud's
    ex_create_network / ex_create_subnet; the image is the first, by id, of moto's images whose
    name matches ``*ubuntu*`` (or of all its images if none does), so the choice is deterministic.
    """
    if reset:
        moto_reset(url)
    driver = ec2_driver(url)
    # No name=: libcloud then tags with CreateTags, whose 0-based ResourceId.0 / Tag.0.Key moto 5.2
    # rejects ("MissingParameter: ... resourceIdSet"); create_node's TagSpecification works.
    vpc = driver.ex_create_network(vpc_cidr)
    subnet = driver.ex_create_subnet(vpc.id, subnet_cidr, availability_zone)
    images = driver.list_images(ex_filters={"name": "*ubuntu*"}) or driver.list_images()
    if not images:
        raise RuntimeError(f"moto at {url} lists no images")
    image = min(images, key=lambda i: i.id)
    return Ec2World(url=url, vpc_id=vpc.id, subnet_id=subnet.id, subnet_cidr=subnet_cidr,
                    availability_zone=availability_zone, image_id=image.id)
