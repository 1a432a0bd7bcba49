"""Stage-in (inputs, artifacts) and stage-out (outputFiles, outputDirs) inside a job's directory.

Every path comes from the user, so each is resolved and checked to stay inside the job's home
before anything is written or read there. Stage-in runs before any of the job's code; stage-out
runs after its containers ran in the home, so there every path is opened one component at a
time without following links (`open_beneath`), and only regular files and directories are read.
"""
from __future__ import annotations

import base64
import bz2
import glob
import gzip
import hashlib
import http.client
import os
import shutil
import socket
import ssl
import stat
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile


class StageError(Exception):
    """Stage-in or stage-out failed; `reason` is the statusReason users see."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def inside(home: str, relative: str) -> str:
    """The absolute path of `relative` under `home`; StageError if it would leave it."""
    root = os.path.realpath(home)
    path = os.path.realpath(os.path.join(root, relative))
    if path != root and not path.startswith(root + os.sep):
        raise StageError("Invalid path", relative)
    return path


def write_inputs(home: str, inputs: list[dict]) -> None:
    for item in inputs:
        path = inside(home, item["filename"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as handle:
            handle.write(base64.b64decode(item["content"]))
        os.chmod(path, 0o775 if item.get("executable") else 0o664)


_ARCHIVES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar", ".zip", ".gz", ".bz2")


def _opener(create_connection, ca_file: str | None) -> urllib.request.OpenerDirector:
    """urllib whose connections (redirects included) are made by `create_connection`; https
    trusts the system's CAs and `ca_file` (the gateway's, whose signed URLs artifacts may be)."""
    class HTTPConnection(http.client.HTTPConnection):
        _create_connection = staticmethod(create_connection)

    class HTTPSConnection(http.client.HTTPSConnection):
        _create_connection = staticmethod(create_connection)

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, request):
            return self.do_open(HTTPConnection, request)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, request):
            return self.do_open(HTTPSConnection, request, context=self._context)

    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)
    return urllib.request.build_opener(HTTPHandler, HTTPSHandler(context=context))


def fetch_artifacts(home: str, artifacts: list[dict], mounts_dir: str,
                    create_connection=socket.create_connection, ca_file: str | None = None) -> list[tuple[str, str]]:
    """Download each artifact into `home` (connections made by `create_connection`: the agent
    passes its sandbox's, so an artifact reaches no more than the job could), unpack archives in
    place; returns the bind mounts (host path, container path) their `mountpoint`s ask for. A
    mountpoint's directory moves to `mounts_dir/<n>`, out of the job's reach, and the home keeps
    a link to where the container sees it."""
    opener = _opener(create_connection, ca_file)
    mounts = []
    for artifact in artifacts:
        url = artifact["url"]
        if urllib.parse.urlparse(url).scheme not in ("http", "https"):
            raise StageError("Artifact download failed", f"{url}: only http(s) URLs can be fetched")
        name = os.path.basename(urllib.parse.urlparse(url).path) or "artifact"
        path = inside(home, name)
        try:
            with opener.open(url, timeout=600) as response, open(path, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (OSError, ValueError, http.client.HTTPException) as error:
            raise StageError("Artifact download failed", f"{url}: {error}") from None
        try:
            _unpack(path, home)
        except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, StageError) as error:
            raise StageError("Artifact uncompress failed", f"{name}: {error}") from None
        if artifact.get("executable") and os.path.exists(path):
            os.chmod(path, 0o775)
        if mountpoint := artifact.get("mountpoint"):
            source, target = mountpoint.split(":", 1)
            host = inside(home, source)
            if not os.path.isdir(host):
                raise StageError("Artifact download failed", f"{source} (of mountpoint {mountpoint}) is not a directory")
            moved = os.path.join(mounts_dir, str(len(mounts)))
            os.rename(host, moved)
            os.symlink(target, host)
            mounts.append((moved, target))
    return mounts


def _unpack(path: str, home: str) -> None:
    lower = path.lower()
    suffix = next((s for s in _ARCHIVES if lower.endswith(s)), None)
    if suffix is None:
        return
    if suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                inside(home, member)
            archive.extractall(home)
    elif suffix.startswith(".t"):
        with tarfile.open(path) as archive:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 (nodes may have an older python3)
                archive.extractall(home, filter="data")  # refuses members that would leave `home`
            else:
                for member in archive.getmembers():
                    inside(home, member.name)
                    if member.issym() or member.islnk():
                        inside(home, os.path.join(os.path.dirname(member.name), member.linkname)
                               if member.issym() else member.linkname)
                    elif not (member.isfile() or member.isdir()):
                        raise tarfile.TarError(f"{member.name}: special files are not unpacked")
                archive.extractall(home)
    else:
        opener = gzip.open if suffix == ".gz" else bz2.open
        with opener(path) as packed, open(path[: -len(suffix)], "wb") as out:
            shutil.copyfileobj(packed, out, 1 << 20)
    os.remove(path)


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_beneath(root: str, relative: str, directory: bool = False) -> int:
    """A descriptor of `relative` under `root`, opened one component at a time without following
    any link (a link on the way is an error). Non-blocking, so a FIFO cannot hang the agent."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if ".." in parts or not parts:
        raise StageError("Invalid path", relative)
    fd = os.open(root, _DIRECTORY)
    try:
        for number, part in enumerate(parts):
            last = number == len(parts) - 1
            flags = _DIRECTORY if directory or not last else os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
            parent, fd = fd, -1
            try:
                fd = os.open(part, flags, dir_fd=parent)
            finally:
                os.close(parent)
        return fd
    except OSError:
        if fd >= 0:
            os.close(fd)
        raise


def open_output_file(home: str, pattern: str):
    """The one regular file an outputFiles entry (a path, possibly a glob) names, opened for reading."""
    for match in sorted(glob.glob(os.path.join(glob.escape(home), pattern))):
        try:
            fd = open_beneath(home, os.path.relpath(match, home))
        except (OSError, StageError):
            continue  # outside the home, through a link, or gone
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        os.close(fd)
    raise StageError("Stageout failed due to no such file or directory", pattern)


def pack_output_dir(home: str, name: str, scratch: str | None = None) -> str:
    """A .tgz (in `scratch`) of an outputDirs entry, which the caller removes. Its regular files,
    directories and links (stored as links, never followed) are packed; nothing else is."""
    try:
        top = open_beneath(home, name, directory=True)
    except OSError:
        raise StageError("Stageout failed due to no such file or directory", name) from None
    handle, archive = tempfile.mkstemp(suffix=".tgz", dir=scratch)
    os.close(handle)
    base = os.path.basename(os.path.normpath(name))
    try:
        with tarfile.open(archive, "w:gz") as tar:
            for path, dirs, files, dir_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
                prefix = os.path.normpath(os.path.join(base, path))
                tar.addfile(_tarinfo(prefix, os.stat(dir_fd), tarfile.DIRTYPE))
                for entry in dirs + files:
                    _pack_entry(tar, os.path.join(prefix, entry), entry, dir_fd)
    except OSError as error:
        os.remove(archive)
        raise StageError("Stageout failed due to tarball creation failed", str(error)) from None
    finally:
        os.close(top)
    return archive


def _tarinfo(name: str, status: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, stat.S_IMODE(status.st_mode), int(status.st_mtime)
    return info


def _pack_entry(tar: tarfile.TarFile, name: str, entry: str, dir_fd: int) -> None:
    status = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(status.st_mode):
        info = _tarinfo(name, status, tarfile.SYMTYPE)
        info.linkname = os.readlink(entry, dir_fd=dir_fd)
        tar.addfile(info)
    elif stat.S_ISREG(status.st_mode):
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        with os.fdopen(fd, "rb") as handle:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                return  # replaced meanwhile
            info = _tarinfo(name, opened, tarfile.REGTYPE)
            info.size = opened.st_size
            tar.addfile(info, handle)


def fetch_image(url: str, directory: str, ca_file: str | None = None,
                create_connection=socket.create_connection) -> tuple[str, str]:
    """Download an uploaded image archive (a signed URL of the gateway) into `directory`, which the
    agent owns and no job can reach, as a new file (never through an existing name or link).
    Returns its path and sha256; the caller removes it."""
    opener = _opener(create_connection, ca_file)
    fd, path = tempfile.mkstemp(prefix="image-", suffix=".tar", dir=directory)
    digest = hashlib.sha256()
    try:
        with opener.open(url, timeout=600) as response, os.fdopen(fd, "wb") as out:
            while piece := response.read(1 << 20):
                digest.update(piece)
                out.write(piece)
    except (OSError, ValueError, http.client.HTTPException) as error:
        os.remove(path)
        raise StageError("Container image download failed", str(error)) from None
    return path, digest.hexdigest()
