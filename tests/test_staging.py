"""Stage-in and stage-out on a node: user-given paths never leave the job's directory."""
import base64
import gzip
import io
import os
import tarfile
import zipfile

import pytest

from provisioner.agent import staging
from tests.conftest import REPO, tgz


def test_inputs_are_written_with_their_mode(tmp_path):
    staging.write_inputs(str(tmp_path), [
        {"filename": "run.sh", "content": base64.b64encode(b"#!/bin/sh\n").decode(), "executable": True},
        {"filename": "data/in.txt", "content": base64.b64encode(b"x").decode()},
    ])
    assert os.stat(tmp_path / "run.sh").st_mode & 0o777 == 0o775
    assert (tmp_path / "data/in.txt").read_bytes() == b"x"


def test_archives_are_unpacked_and_mountpoints_bound(tmp_path, web):
    root, url = web
    (root / "data.tgz").write_bytes(tgz({"data/a.txt": b"A"}))
    (root / "plain.txt.gz").write_bytes(gzip.compress(b"plain"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("z/b.txt", "B")
    (root / "z.zip").write_bytes(buffer.getvalue())
    home, mounts_dir = tmp_path / "home", tmp_path / "mounts"
    home.mkdir()
    mounts_dir.mkdir()
    mounts = staging.fetch_artifacts(str(home), [
        {"url": f"{url}/data.tgz", "mountpoint": "data:/mnt/data"}, {"url": f"{url}/plain.txt.gz"},
        {"url": f"{url}/z.zip"}], str(mounts_dir))
    assert (home / "plain.txt").read_bytes() == b"plain"
    assert (home / "z/b.txt").read_bytes() == b"B"
    assert not (home / "data.tgz").exists()
    # The mounted directory lives where the job cannot replace it; the home links to its mountpoint.
    assert mounts == [(str(mounts_dir / "0"), "/mnt/data")]
    assert (mounts_dir / "0/a.txt").read_bytes() == b"A"
    assert os.readlink(home / "data") == "/mnt/data"


def test_artifact_failures_say_which(tmp_path, web):
    root, url = web
    (root / "bad.tgz").write_bytes(b"not an archive")
    (root / "evil.tgz").write_bytes(tgz({"../escaped.txt": b"x"}))
    with pytest.raises(staging.StageError, match="Artifact download failed") as missing:
        staging.fetch_artifacts(str(tmp_path), mounts_dir=str(tmp_path), artifacts=[{"url": f"{url}/missing.tgz"}])
    assert missing.value.reason == "Artifact download failed"
    with pytest.raises(staging.StageError, match="Artifact uncompress failed"):
        staging.fetch_artifacts(str(tmp_path), mounts_dir=str(tmp_path), artifacts=[{"url": f"{url}/bad.tgz"}])
    with pytest.raises(staging.StageError, match="Artifact uncompress failed"):
        staging.fetch_artifacts(str(tmp_path), mounts_dir=str(tmp_path), artifacts=[{"url": f"{url}/evil.tgz"}])
    assert not (tmp_path.parent / "escaped.txt").exists()
    with pytest.raises(staging.StageError, match="only http"):
        staging.fetch_artifacts(str(tmp_path), mounts_dir=str(tmp_path), artifacts=[{"url": "file:///etc/passwd"}])


def test_outputs_never_leave_the_home(tmp_path):
    home = tmp_path / "home"
    (home / "results/sub").mkdir(parents=True)
    (home / "results/r.txt").write_text("r")
    (home / "results/sub/s.txt").write_text("s")
    (home / "out-1.txt").write_text("1")
    (tmp_path / "secret").write_text("s")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets/key").write_text("k")
    os.symlink(tmp_path / "secret", home / "link")
    os.symlink(tmp_path / "secrets", home / "dirlink")
    os.symlink(tmp_path / "secret", home / "results/leak")
    os.symlink(tmp_path / "secrets", home / "results/leakdir")
    os.mkfifo(home / "fifo")
    with staging.open_output_file(str(home), "out-*.txt") as handle:
        assert handle.read() == b"1"
    for name in ("link", "dirlink/key", "fifo", "absent.txt", "../secret"):
        with pytest.raises(staging.StageError, match="no such file"):
            staging.open_output_file(str(home), name)
    with pytest.raises(staging.StageError, match="no such file"):
        staging.pack_output_dir(str(home), "dirlink")
    archive = staging.pack_output_dir(str(home), "results", scratch=str(tmp_path))
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["results", "results/leak", "results/leakdir", "results/r.txt",
                                          "results/sub", "results/sub/s.txt"]
        assert tar.getmember("results/leak").issym()  # kept as a link, never followed
        assert tar.extractfile("results/sub/s.txt").read() == b"s"
    os.remove(archive)


def test_the_nodes_own_python_unpacks_safely_too(tmp_path):
    """The agent runs with the node's python3 (Debian's is 3.11.2, without tarfile's data filter)."""
    import subprocess

    (tmp_path / "good.tgz").write_bytes(tgz({"d/a.txt": b"A"}))
    (tmp_path / "evil.tgz").write_bytes(tgz({"../escaped.txt": b"x"}))
    script = (
        "import sys; from agent import staging\n"
        "home = sys.argv[1]\n"
        "staging._unpack(home + '/good.tgz', home)\n"
        "try:\n    staging._unpack(home + '/evil.tgz', home)\nexcept staging.StageError as e:\n    print('refused', e)\n")
    out = subprocess.run(["/usr/bin/python3", "-c", script, str(tmp_path)], cwd=REPO / "provisioner",
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused Invalid path")
    assert (tmp_path / "d/a.txt").read_bytes() == b"A"
    assert not (tmp_path.parent / "escaped.txt").exists()
