"""A busybox image built on this machine, for machines without a registry (tests, CI, demos).

busybox_image(name=IMAGE) -> str
    Imports into podman, from Debian's busybox-static (/bin/busybox), a root filesystem with a
    symlink per common applet, /tmp, /home/user and /etc/passwd, tagged `name`. Built once per
    machine; later calls only check that the image exists with the current applet list (a label),
    ~0.05 s. Safe to call from parallel processes (file lock). `make serve` also tags it
    `docker.io/library/busybox:latest`, so `busybox` (the CLI's example) resolves locally.
containers_conf(path=None) -> str
    The containers.conf podman needs on this machine (runc, default ulimits; stack-notes 6), written
    at `path` (default /tmp/prominence-test/containers.conf); returns the path.
podman_env() -> dict
    os.environ plus CONTAINERS_CONF, for running the podman CLI.

`python -m provisioner.local_image NAME...` builds the image under each name.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

from provisioner.agent.runtime import write_containers_conf

IMAGE = "localhost/prominence-busybox:latest"
BUSYBOX = "/bin/busybox"
_APPLETS = """
    sh ash echo cat sleep env ls pwd dd head tail yes true false id wc mkdir touch rm cp mv
    printf test [ grep sed awk sort uniq tr cut seq date hostname uname whoami ps kill trap
    basename dirname readlink stat chmod ln find xargs tee nproc free du df md5sum sha256sum
    wget nc base64 gzip gunzip tar expr timeout
    mknod mkfifo mount umount ping ip chown truncate
"""
APPLETS = sorted(_APPLETS.split())
_STATE = "/tmp/prominence-test"


def containers_conf(path: str | None = None) -> str:
    return write_containers_conf(path or os.path.join(_STATE, "containers.conf"))


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": containers_conf()}


def _label() -> str:
    st = os.stat(BUSYBOX)
    return hashlib.sha256(f"{st.st_size} {st.st_mtime_ns} {' '.join(APPLETS)} 1".encode()).hexdigest()[:16]


def _current(env: dict[str, str], label: str, name: str) -> bool:
    r = subprocess.run(
        ["podman", "image", "inspect", "--format", '{{index .Labels "prominence.test-image"}}', name],
        env=env, capture_output=True, text=True, check=False,
    )
    return r.returncode == 0 and r.stdout.strip() == label


def busybox_image(name: str = IMAGE) -> str:
    if not os.path.exists(BUSYBOX):
        raise RuntimeError(f"{BUSYBOX} is missing: install Debian's busybox-static (make system-packages)")
    env = podman_env()
    label = _label()
    if _current(env, label, name):
        return name
    os.makedirs(_STATE, exist_ok=True)
    with open(os.path.join(_STATE, "image.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _current(env, label, name):
            return name
        with tempfile.TemporaryDirectory() as tmp:
            root = os.path.join(tmp, "root")
            for d in ("bin", "tmp", "home/user", "etc", "root"):
                os.makedirs(os.path.join(root, d))
            os.chmod(os.path.join(root, "tmp"), 0o1777)
            os.chmod(os.path.join(root, "home/user"), 0o777)
            shutil.copy2(BUSYBOX, os.path.join(root, "bin/busybox"))
            for applet in APPLETS:
                os.symlink("busybox", os.path.join(root, "bin", applet))
            with open(os.path.join(root, "etc/passwd"), "w") as f:
                f.write("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n")
            with open(os.path.join(root, "etc/group"), "w") as f:
                f.write("root:x:0:\nuser:x:1000:\n")
            archive = os.path.join(tmp, "rootfs.tar")
            with tarfile.open(archive, "w") as tar:
                tar.add(root, arcname=".")
            subprocess.run(
                ["podman", "import", "--quiet",
                 "--change", "ENV PATH=/bin",
                 "--change", 'CMD ["sh"]',
                 "--change", f"LABEL prominence.test-image={label}",
                 archive, name],
                env=env, check=True, capture_output=True,
            )
    return name


if __name__ == "__main__":
    for image in sys.argv[1:] or [IMAGE]:
        print(busybox_image(image))
