"""Stage-in (inputs, artifacts) and stage-out (outputFiles, outputDirs) inside a job's directory.

Every path comes from the user, so each is resolved and checked to stay inside the job's home
before anything is written or read there.
"""
from __future__ import annotations

import base64
import bz2
import glob
import gzip
import os
import shutil
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


def fetch_artifacts(home: str, artifacts: list[dict]) -> list[tuple[str, str]]:
    """Download each artifact into `home`, unpack archives in place; returns the bind mounts
    (host path, container path) their `mountpoint`s ask for."""
    mounts = []
    for artifact in artifacts:
        url = artifact["url"]
        if urllib.parse.urlparse(url).scheme not in ("http", "https"):
            raise StageError("Artifact download failed", f"{url}: only http(s) URLs can be fetched")
        name = os.path.basename(urllib.parse.urlparse(url).path) or "artifact"
        path = inside(home, name)
        try:
            with urllib.request.urlopen(url, timeout=600) as response, open(path, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except (OSError, ValueError) as error:
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
            if not os.path.exists(host):
                raise StageError("Artifact download failed", f"{source} (of mountpoint {mountpoint}) does not exist")
            mounts.append((host, target))
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


def find_output_file(home: str, pattern: str) -> str:
    """The one file an outputFiles entry (a path, possibly a glob) names."""
    matches = sorted(m for m in glob.glob(os.path.join(home, pattern)) if os.path.isfile(m))
    if not matches:
        raise StageError("Stageout failed due to no such file or directory", pattern)
    return inside(home, os.path.relpath(matches[0], home))


def pack_output_dir(home: str, name: str) -> str:
    """A .tgz of an outputDirs entry, in a temporary file the caller removes."""
    path = inside(home, name)
    if not os.path.isdir(path):
        raise StageError("Stageout failed due to no such file or directory", name)
    handle, archive = tempfile.mkstemp(suffix=".tgz")
    os.close(handle)
    try:
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(path, arcname=os.path.basename(path.rstrip("/")))
    except OSError as error:
        os.remove(archive)
        raise StageError("Stageout failed due to tarball creation failed", str(error)) from None
    return archive
