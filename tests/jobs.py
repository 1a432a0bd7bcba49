"""Helpers for tests that run jobs on a live server (tests/live.py) through /v1."""
import time


def job(image, *tasks, cpus=1, memory=0.5, **extra):
    return {"resources": {"cpus": cpus, "memory": memory, "disk": 1, **extra.pop("resources", {})},
            "tasks": [{"image": image, **task} for task in tasks], **extra}


def submit(client, spec) -> int:
    response = client.post("/jobs", json=spec)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def describe(client, job_id) -> dict:
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()[0]


def wait_for(client, job_id, statuses=("completed", "failed", "killed", "deleted"), timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = describe(client, job_id)
        if current["status"] in statuses:
            return current
        time.sleep(0.25)
    raise AssertionError(f"job {job_id} still {current['status']} ({current.get('statusReason')}) after {timeout} s")
