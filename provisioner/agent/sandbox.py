"""A job's sandbox on the node: its own disk, its own network and its own user ids (DESIGN.md 3.5).

Standard library only (the agent is copied to nodes). The agent runs as root; a job is hostile.

Disk. A sparse file of `resources.disk` GiB, formatted ext4 and loop-mounted (nosuid, nodev) at
`<job dir>/fs`, holds everything the job can write: its home (`fs/home`, bound at /home/user),
its temporary directory (`fs/tmp`, bound at /tmp and /var/tmp), the directories its artifacts'
`mountpoint`s bind (`fs/mounts/<n>`) and its stdout/stderr files (`fs/stdout`, `fs/stderr`). The
container's own root filesystem is read-only, as with singularity. So a job cannot write more
than it asked for: when its filesystem is full, `disk_full()` says so and the agent stops it.
Creating, mounting and removing one costs ~25 ms here.

Mount sources. The containers see `fs/home`, `fs/tmp` and `fs/mounts/<n>`, never their parents,
so nothing a job does can replace a mount source by a link: every source is a path the job
cannot change. (A `mountpoint` source written into the home by the job could have been.)

User ids. Root in the job's containers is uid/gid `uid_base` on the node, a range of 65536 ids
no host account uses (`uid_base(job_id)`); files the job writes belong to that range. The job's
directories are given to it after stage-in (`give_to_job`), without following links.

Network. The job's containers share a network namespace made for the job (`fs` is not in it):
`slirp4netns` gives it outbound connections (user-mode NAT, `--disable-host-loopback`), so the
node's loopback services (the gateway, a database, anything on 127.0.0.1) are out of its reach,
and other jobs' traffic is in other namespaces. When the gateway itself is on the node's
loopback, the agent listens on the same address and port *inside* the job's namespace and relays
those connections, and only those, to the gateway: `PROMINENCE_URL` works unchanged from inside
the job, and nothing else on the node's loopback opens to it.
"""
from __future__ import annotations

import ctypes
import fcntl
import ipaddress
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import urllib.parse

UID_RANGE = 65536
_UID_BASE = 1 << 31  # podman's `--userns=auto` range starts here too: no host account lives there
_UID_SLOTS = (1 << 31) // UID_RANGE - 1
SLIRP_DNS = "10.0.2.3"  # slirp4netns's resolver, which forwards to the node's
FULL_BYTES = 1 << 20  # a job's filesystem with less than this free is full
_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MNT_DETACH = 2
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(Exception):
    """The node could not make the job's sandbox (the message says which part); not the job's fault."""


def uid_base(job_id: int) -> int:
    """The node uid that is root in the job's containers: one of 32767 ranges, by job id."""
    return _UID_BASE + (job_id % _UID_SLOTS) * UID_RANGE


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _run(*argv: str) -> None:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SandboxError(f"{argv[0]}: {error}") from None
    if done.returncode != 0:
        raise SandboxError(f"{argv[0]} failed: {(done.stderr or done.stdout).strip()[-300:]}")


def _mounts_below(directory: str) -> list[str]:
    """Mount points at or below `directory`, deepest first (from /proc/self/mountinfo)."""
    root = os.path.realpath(directory)
    points = []
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                # Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
                point = line.split()[4].encode().decode("unicode_escape").encode("latin-1").decode()
                if point == root or point.startswith(root + "/"):
                    points.append(point)
    except OSError:
        return []
    return sorted(points, key=len, reverse=True)


def release(directory: str) -> None:
    """Unmount everything at or below `directory` (job filesystems, network namespaces), then
    remove it: the clean-up for sandboxes whose agent died (at agent start, and when a node is
    destroyed). Never follows links, never descends into a job's filesystem before detaching it."""
    for point in _mounts_below(directory):
        # Detached at once; the kernel frees it (and its loop device) when nothing holds it.
        _libc.umount2(os.fsencode(point), _MNT_DETACH)
    shutil.rmtree(directory, ignore_errors=True)


def _in_new_thread(work):
    """`work()` in a thread of its own, which ends after it: namespaces belong to threads, and a
    thread that entered a job's network namespace must never run anything else. Its result, or
    its OSError/SandboxError raised here."""
    result: list = []

    def run() -> None:
        try:
            result.append(work())
        except (OSError, SandboxError) as error:
            result.append(error)

    thread = threading.Thread(target=run, name="netns", daemon=True)
    thread.start()
    thread.join()
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]


def _new_netns(path: str, listen: list[tuple[str, int]]) -> list[socket.socket]:
    """A new network namespace with its loopback up, kept alive by a bind mount on `path`, and
    listening sockets on `listen` (address, port) inside it (sockets stay in the namespace they
    were made in)."""
    def inside() -> list[socket.socket]:
        _check(_libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            request = struct.pack("16sH22x", b"lo", 0)
            flags = struct.unpack("16sH22x", fcntl.ioctl(probe, _SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(probe, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))
        # Link-local addresses are the cloud's metadata service (169.254.169.254), which would
        # tell a job the VM's credentials: unreachable from the job's namespace. (A child process
        # runs in its parent thread's namespaces.)
        _run("ip", "route", "add", "unreachable", "169.254.0.0/16")
        sockets = []
        for address, port in listen:
            listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((address, port))
            listener.listen(64)
            listener.setblocking(False)
            sockets.append(listener)
        with open(path, "w"):
            pass
        _check(_libc.mount(f"/proc/self/task/{threading.get_native_id()}/ns/net".encode(), os.fsencode(path),
                           None, _MS_BIND, None), f"bind mount of the network namespace on {path}")
        return sockets

    try:
        return _in_new_thread(inside)
    except (OSError, SandboxError) as error:
        raise SandboxError(f"cannot make the job's network namespace: {error}") from None


def _in_netns(path: str, make):
    """`make()` called in a thread that has entered the network namespace at `path`."""
    def inside():
        with open(path) as namespace:
            _check(_libc.setns(namespace.fileno(), _CLONE_NEWNET), "setns")
        return make()
    return _in_new_thread(inside)


MAX_RELAYED = 32  # connections a job may have open to the gateway at once


class _Relay(threading.Thread):
    """Relays connections accepted inside the job's namespace to one address outside it, at most
    MAX_RELAYED at once (each takes a thread of the agent): more are closed as they come."""

    def __init__(self, listeners: list[socket.socket], target: tuple[str, int]):
        super().__init__(name="gateway-relay", daemon=True)
        self.listeners = listeners
        self.target = target
        self._stop_r, self._stop_w = os.pipe()
        self._pipes: list[threading.Thread] = []

    def run(self) -> None:
        while True:
            ready, _, _ = select.select([self._stop_r, *self.listeners], [], [])
            if self._stop_r in ready:
                return
            for listener in ready:
                try:
                    client, _ = listener.accept()
                except OSError:
                    continue
                self._pipes = [pipe for pipe in self._pipes if pipe.is_alive()]
                if len(self._pipes) >= MAX_RELAYED:
                    client.close()
                    continue
                pipe = threading.Thread(target=self._pipe, args=(client,), name="relay", daemon=True)
                self._pipes.append(pipe)
                pipe.start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        with client, upstream:
            client.setblocking(True)
            upstream.settimeout(None)
            peers = {client: upstream, upstream: client}
            try:
                while peers:
                    ready, _, _ = select.select([self._stop_r, *peers], [], [], 3600)
                    if not ready or self._stop_r in ready:
                        return
                    for sock in ready:
                        data = sock.recv(65536)
                        if data:
                            peers[sock].sendall(data)
                            continue
                        peers[sock].shutdown(socket.SHUT_WR)  # pass the end of the stream on
                        del peers[sock]
            except OSError:
                return

    def close(self) -> None:
        os.write(self._stop_w, b"x")  # never read: every select on it returns from now on
        self.join(timeout=5)
        for pipe in self._pipes:
            pipe.join(timeout=5)
        for listener in self.listeners:
            listener.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


def loopback_gateway(url: str) -> tuple[str, int] | None:
    """(host, port) of a gateway URL on this node's loopback, which the job needs relayed; None otherwise."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if host == "localhost":
        return "127.0.0.1", port
    try:
        return (host, port) if ipaddress.ip_address(host).is_loopback else None
    except ValueError:
        return None


class Sandbox:
    """Made by `create`, removed by `close` (idempotent). Paths: `home`, `tmp`, `stdout`,
    `stderr`, `mounts` (for artifact mountpoints); `netns` for `podman --network ns:<netns>`."""

    def __init__(self, directory: str, uid: int):
        self.dir = directory
        self.uid = uid
        self.fs = os.path.join(directory, "fs")
        self.home = os.path.join(self.fs, "home")
        self.tmp = os.path.join(self.fs, "tmp")
        self.mounts = os.path.join(self.fs, "mounts")
        self.stdout = os.path.join(self.fs, "stdout")
        self.stderr = os.path.join(self.fs, "stderr")
        self.netns = os.path.join(directory, "netns")
        self._slirp: subprocess.Popen | None = None
        self._slirp_exit: int | None = None
        self._relay: _Relay | None = None

    @classmethod
    def create(cls, directory: str, disk_gb: int, uid: int, gateway: tuple[str, int] | None) -> Sandbox:
        os.makedirs(directory, mode=0o700)
        sandbox = cls(directory, uid)
        try:
            sandbox._make_filesystem(disk_gb)
            sandbox._make_network(gateway)
        except BaseException:
            sandbox.close()
            raise
        return sandbox

    def _make_filesystem(self, disk_gb: int) -> None:
        image = os.path.join(self.dir, "disk.img")
        with open(image, "wb") as handle:
            handle.truncate(disk_gb << 30)
        # No journal and lazy inode tables: the filesystem lives as long as the job, and mkfs
        # then takes ~10 ms whatever the size; noinit_itable keeps the kernel from writing the
        # inode tables out in the background afterwards.
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard", image)
        os.mkdir(self.fs, 0o700)
        _run("mount", "-o", "loop,nosuid,nodev,noinit_itable", image, self.fs)
        os.chmod(self.fs, 0o700)
        for path in (self.home, self.tmp):
            os.mkdir(path)
        os.mkdir(self.mounts, 0o700)
        for path in (self.stdout, self.stderr):
            open(path, "wb").close()

    def _make_network(self, gateway: tuple[str, int] | None) -> None:
        listeners = _new_netns(self.netns, [gateway] if gateway else [])
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        try:
            # --exit-fd: slirp4netns ends when this pipe closes, also when the agent dies.
            self._slirp = subprocess.Popen(
                ["slirp4netns", "--configure", "--mtu=65520", "--disable-host-loopback", "--enable-seccomp",
                 f"--ready-fd={ready_w}", f"--exit-fd={exit_r}", "--netns-type=path", self.netns, "tap0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=(ready_w, exit_r))
        except OSError as error:
            os.close(exit_w)
            raise SandboxError(f"cannot start slirp4netns: {error}") from None
        finally:
            os.close(ready_w)
            os.close(exit_r)
        self._slirp_exit = exit_w
        try:
            ready, _, _ = select.select([ready_r], [], [], 10)
            if not ready or os.read(ready_r, 1) != b"1":
                self._slirp.kill()
                message = self._slirp.communicate(timeout=5)[1].decode(errors="replace").strip()
                raise SandboxError(f"slirp4netns did not configure the job's network: {message[-300:]}")
        finally:
            os.close(ready_r)
        self._slirp.stderr.close()
        if gateway:
            self._relay = _Relay(listeners, gateway)
            self._relay.start()

    def create_connection(self, address: tuple[str, int], timeout: float | None = None,
                          source_address: None = None) -> socket.socket:
        """`socket.create_connection` from inside the job's network namespace: what the agent
        fetches for the job (artifacts) reaches no more than the job itself could. Names are
        resolved on the node (the job's namespace has no resolver of the node's own)."""
        host, port = address
        error: OSError = OSError(f"cannot resolve {host}")
        for family, kind, proto, _, target in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            sock = _in_netns(self.netns, lambda: socket.socket(family, kind, proto))
            try:
                sock.settimeout(timeout)
                sock.connect(target)
                return sock
            except OSError as failure:
                sock.close()
                error = failure
        raise error

    def give_to_job(self) -> None:
        """Hand the home and tmp to the job's root (after stage-in: nothing of the job ran yet)."""
        for top in (self.home, self.tmp):
            os.chown(top, self.uid, self.uid)
            for _dir, dirs, files, dir_fd in os.fwalk(top, follow_symlinks=False):
                for name in dirs + files:
                    os.chown(name, self.uid, self.uid, dir_fd=dir_fd, follow_symlinks=False)
        os.chmod(self.tmp, 0o1777)

    def disk_full(self) -> bool:
        try:
            usage = os.statvfs(self.fs)
        except OSError:
            return False
        return usage.f_bavail * usage.f_frsize < FULL_BYTES

    def close(self) -> None:
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        if self._slirp is not None:
            os.close(self._slirp_exit)
            try:
                self._slirp.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._slirp.kill()
                self._slirp.wait()
            self._slirp = None
        release(self.dir)
