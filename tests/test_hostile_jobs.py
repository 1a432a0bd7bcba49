"""Jobs written by an attacker, run for real: a live server bursts onto the local cloud, and the
node's agent runs each job in real podman containers. Each test is one attack (issue 6) and
checks that the node, its loopback services and the other users' data stay untouched.

Two users share the server: alice (the victim) and mallory (the attacker).
"""
import hashlib
import io
import re
import socket
import tarfile
import threading
import time

import httpx
import pytest
from sqlalchemy import insert

from gateway.services.batcher import allocate_ids
from provisioner.drivers.local import LocalNodeDriver
from schema.db import make_engine
from schema.tables import jobs
from tests.conftest import tgz
from tests.images import busybox_image
from tests.jobs import describe, job, submit, wait_for
from tests.live import LiveServer

pytestmark = pytest.mark.slow

# Plain HTTP with busybox nc (its static wget crashes in this image): `get HOST PORT PATH [TOKEN]`.
# nc's input stays open a while: the server takes the end of it for a client that hung up.
GET = ("get() { { printf 'GET %s HTTP/1.0\\r\\nAuthorization: Bearer %s\\r\\n\\r\\n' \"$3\" \"$4\"; sleep 1; } "
       "| nc -w 5 \"$1\" \"$2\"; }")
# PROMINENCE_URL's host and port, in a shell.
URL_PARTS = 'hp=${PROMINENCE_URL#http://}; hp=${hp%%/*}; host=${hp%:*}; port=${hp#*:}'


@pytest.fixture(scope="module")
def image():
    return busybox_image()


@pytest.fixture(scope="module")
def server(tmp_path_factory, image):
    root = tmp_path_factory.mktemp("hostile")
    live = LiveServer(root / "data", f"sqlite:///{root / 'state.db'}", provisioner=True,
                      extra_args=("--local-cpus", "2", "--local-memory-mb", "4096"))
    with live:
        yield live
    driver = LocalNodeDriver(str(live.data_dir / "nodes"))
    for node in driver.list_nodes():
        driver.destroy_node(node)


def client_of(server, user):
    return httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {server.token(user)}"},
                        timeout=60)


@pytest.fixture(scope="module")
def mallory(server):
    with client_of(server, "mallory") as client:
        yield client


@pytest.fixture(scope="module")
def alice(server):
    with client_of(server, "alice") as client:
        yield client


@pytest.fixture
def loopback_service():
    """A service of the node on its loopback (a database, say), and whether anyone connected."""
    listener = socket.create_server(("127.0.0.1", 0))
    connected = threading.Event()

    def accept():
        try:
            listener.accept()[0].close()
            connected.set()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1], connected
    listener.close()


def stdout(client, job_id) -> str:
    return client.get(f"/jobs/{job_id}/stdout").text


def run_script(client, image, script: str) -> tuple[int, str]:
    """Runs `sh -c script` as a job that must complete; its id and stdout."""
    job_id = submit(client, job(image, {"cmd": "sh", "args": ["-c", script]}))
    done = wait_for(client, job_id)
    assert done["status"] == "completed", done
    return job_id, stdout(client, job_id)


def assert_refused(output: str, *probes: str) -> None:
    """Each `probe=<exit code>` line of the output says the attempt failed."""
    for probe in probes:
        assert re.search(rf"^{probe}=[1-9]", output, re.M), (probe, output)


def test_a_mountpoint_swapped_for_a_link_mounts_nothing_of_the_host(server, mallory, image, remote):
    """The job replaces its artifact's mount source by a link to / between two tasks: the second
    task must still see the artifact, not the node's root (which holds the server's secret.key)."""
    (remote.root / "data.tgz").write_bytes(tgz({"data/a.txt": b"artifact content\n"}))
    secret = server.data_dir / "secret.key"
    victim_file = server.data_dir.parent / "written-by-a-job"
    job_id = submit(mallory, job(
        image,
        {"cmd": "sh -c 'rm -rf data; ln -s / data; ls -la data'"},
        {"cmd": f"sh -c 'cat /mnt/data/a.txt; cat /mnt/data{secret}; echo pwned > /mnt/data{victim_file}; true'"},
        artifacts=[{"url": f"{remote.url}/data.tgz", "mountpoint": "data:/mnt/data"}]))
    done = wait_for(mallory, job_id)
    assert done["status"] == "completed", done
    output = stdout(mallory, job_id)
    assert "artifact content" in output
    assert secret.read_text().strip() not in output
    assert not victim_file.exists()


def test_outputs_that_are_links_bring_back_nothing_of_the_node(server, mallory, image):
    secret = server.data_dir / "secret.key"
    as_file = submit(mallory, job(image, {"cmd": f"ln -s {secret} out.txt"}, outputFiles=["out.txt"]))
    failed = wait_for(mallory, as_file)
    assert (failed["status"], failed["statusReason"]) == ("failed", "Stageout failed due to no such file or directory")
    in_dir = submit(mallory, job(image, {"cmd": f"sh -c 'mkdir res && ln -s {secret} res/key && ln -s / res/root "
                                                "&& mkfifo res/fifo && echo mine > res/mine.txt'"},
                                 outputDirs=["res"]))
    done = wait_for(mallory, in_dir)
    assert done["status"] == "completed", done
    archive = httpx.get(done["outputDirs"][0]["url"]).content
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {member.name: member for member in tar.getmembers()}
        assert set(members) == {"res", "res/key", "res/root", "res/mine.txt"}  # no FIFO
        assert members["res/key"].issym() and members["res/root"].issym()
        assert tar.extractfile("res/mine.txt").read() == b"mine\n"
    assert secret.read_bytes() not in archive


def test_the_jobs_network_is_its_own(server, mallory, image, loopback_service):
    """No node loopback service (nor the node's side of the job's network), no raw sockets to
    sniff with, no metadata service; yet PROMINENCE_URL and PROMINENCE_TOKEN work from inside."""
    port, connected = loopback_service
    script = (f"{GET}; {URL_PARTS}; "
              f"nc -w 2 127.0.0.1 {port} </dev/null; echo loopback=$?; "
              f"nc -w 2 10.0.2.2 {port} </dev/null; echo host=$?; "
              f"nc -w 2 169.254.169.254 80 </dev/null; echo metadata=$?; "
              "ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1; echo ping=$?; "
              f"grep -ci ':{port:04X} ' /proc/net/tcp; "
              "ip -o link | cut -d: -f2 | tr -d ' ' | sort | tr '\\n' ' '; echo; "
              'get "$host" "$port" /v1/jobs "$PROMINENCE_TOKEN"')
    job_id, output = run_script(mallory, image, script)
    assert_refused(output, "loopback", "host", "metadata", "ping")
    lines = output.splitlines()
    assert lines[4:6] == ["0", "lo tap0 "], output  # the node's socket is not even visible
    assert "HTTP/1.1 200" in output and f'"id":{job_id}' in output.replace(" ", "")
    assert not connected.is_set()


def test_jobs_cannot_reach_each_other(mallory, alice, image):
    listening = submit(alice, job(image, {"cmd": "sh -c 'echo listening; nc -l -p 9999 -w 30; echo done'"}))
    wait_for(alice, listening, statuses=("running",))
    deadline = time.monotonic() + 30
    while "listening" not in stdout(alice, listening) and time.monotonic() < deadline:
        time.sleep(0.2)
    probe = submit(mallory, job(image, {"cmd": "sh -c 'echo hello | nc -w 2 127.0.0.1 9999; echo probe=$?'"}))
    done = wait_for(mallory, probe)
    assert "probe=1" in stdout(mallory, probe), done
    alice.delete(f"/jobs/{listening}")
    assert "done" not in stdout(alice, listening)


def test_no_privileges_on_the_node(mallory, image):
    script = ("mknod /tmp/mem c 1 1; echo mknod=$?; mount -t tmpfs none /tmp; echo mount=$?; "
              "ping -c 1 -W 1 127.0.0.1 >/dev/null 2>&1; echo raw=$?; touch /bin/x; echo image=$?; "
              "tr '\\0' '\\n' < /proc/1/environ | cut -d= -f1 | sort | tr '\\n' ' '; echo; "
              "ls /proc | grep -c '^[0-9]'; cat /proc/self/uid_map")
    _, output = run_script(mallory, image, script)
    assert_refused(output, "mknod", "mount", "raw", "image")
    lines = output.splitlines()
    # PID 1 is the job's own task, with its own environment: nothing of the node's processes.
    assert "PROMINENCE_JOB_ID" in lines[4] and "CONTAINERS_CONF" not in lines[4]
    assert int(lines[5]) <= 4
    inside, outside, count = map(int, lines[6].split())
    assert inside == 0 and outside >= 1 << 31 and count == 65536  # root inside, nobody outside


def test_an_image_is_never_a_path_on_the_node(mallory, image):
    for path in ("/etc/shadow", "../data/secret.key", "./image.tar", "~/image.tar"):
        response = mallory.post("/jobs", json=job(image, {"cmd": "true", "image": path}))
        assert response.status_code == 400 and "tasks[0].image" in response.json()["error"], response.text


def test_a_description_that_cannot_run_is_the_users_failure_not_retried(server, mallory, image):
    """A stored description that breaks at run time (stored before today's rules, which refuse it
    at submission) fails once, as the user's failure: no node is blamed, nothing is retried."""
    engine = make_engine(server.database_url)
    spec = {"resources": {"cpus": 1, "memory": 0.5, "disk": 1, "nodes": 1},
            "tasks": [{"image": image, "runtime": "singularity", "cmd": "echo 'unbalanced"}]}
    with engine.begin() as connection:
        [job_id] = allocate_ids(connection, 1)
        connection.execute(insert(jobs).values(id=job_id, owner="mallory", status="idle", spec=spec, execution={},
                                               create_time=int(time.time()), memory_mb=512, disk_gb=1))
    engine.dispose()
    done = wait_for(mallory, job_id)
    assert done["status"] == "failed" and "cannot split cmd" in done["statusReason"], done
    assert "retries" not in done["execution"]


def test_a_job_that_writes_more_than_its_disk_is_stopped(mallory, image):
    job_id = submit(mallory, job(image, {"cmd": "sh -c 'dd if=/dev/zero of=/tmp/fill bs=1M count=1500; sleep 60'"},
                                 resources={"disk": 1}))
    done = wait_for(mallory, job_id, timeout=60)
    assert (done["status"], done["statusReason"]) == ("killed", "Job used too much disk space"), done


def test_the_job_token_dies_with_the_job(server, mallory, alice, image):
    secret_job = submit(alice, job(image, {"cmd": "echo alice-secret"}))
    wait_for(alice, secret_job)
    script = (f"{GET}; {URL_PARTS}; echo $PROMINENCE_TOKEN; "
              f'get "$host" "$port" /v1/jobs/{secret_job}/stdout "$PROMINENCE_TOKEN" | head -1; '
              f'get "$host" "$port" /v1/jobs/{secret_job} "$PROMINENCE_TOKEN" | head -1')
    _, output = run_script(mallory, image, script)
    token, *answers = output.splitlines()
    assert answers[0].startswith("HTTP/1.1 403") and answers[1].startswith("HTTP/1.1 404"), answers
    assert "alice-secret" not in output
    after = httpx.get(f"{server.url}/v1/jobs", headers={"Authorization": f"Bearer {token}"})
    assert after.status_code == 401, after.text
    assert describe(alice, secret_job)["status"] == "completed"


def test_big_outputs_are_kept_whole_and_apart(mallory, image):
    """50 MB of stdout arrive complete; a/out.txt and b/out.txt are two outputs, not one."""
    size = 50 * 1024 * 1024
    script = (f"yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c {size}; "
              "mkdir a b; echo first > a/out.txt; echo second > b/out.txt")
    job_id = submit(mallory, job(image, {"cmd": "sh", "args": ["-c", script]},
                                 outputFiles=["a/out.txt", "b/out.txt"]))
    done = wait_for(mallory, job_id, timeout=180)
    assert done["status"] == "completed", done
    expected = hashlib.sha256((b"0123456789abcdefghijklmnopqrstuvwxyz\n" * (size // 37 + 1))[:size]).hexdigest()
    body = mallory.get(f"/jobs/{job_id}/stdout").content
    assert len(body) == size and hashlib.sha256(body).hexdigest() == expected
    urls = {output["name"]: output["url"] for output in done["outputFiles"]}
    assert httpx.get(urls["a/out.txt"]).text == "first\n" and httpx.get(urls["b/out.txt"]).text == "second\n"
