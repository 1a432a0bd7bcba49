"""The /v1 jobs API as a user of curl or the PROMINENCE CLI sees it, on SQLite and PostgreSQL."""
import base64
import json
import time

import pytest

from gateway.services.jobs import output_path
from tests.conftest import simple_job


def test_health_needs_no_token(api):
    response = api.request("GET", "/health", user=None)
    assert response.status_code == 204


def test_create_returns_201_with_integer_id_and_ids_increase(api):
    first, second = api.submit(), api.submit()
    assert isinstance(first, int) and second == first + 1


def test_new_job_is_idle_and_says_why(api):
    job_id = api.submit(simple_job(name="first-job"))
    [job] = api.request("GET", f"/jobs/{job_id}").json()
    assert job["status"] == "idle"
    assert job["statusReason"] == "Waiting for resources"
    assert job["name"] == "first-job"
    assert job["tasks"] == [{"image": "busybox", "runtime": "singularity"}]
    assert abs(job["events"]["createTime"] - time.time()) < 60
    assert job["resources"] == {"nodes": 1, "cpus": 1, "memory": 1, "disk": 10}
    assert job["execution"] == {"runtimeVersion": {}}


def test_detail_shows_the_whole_description_and_hides_storage_credentials(api):
    content = base64.b64encode(b"#!/bin/sh\necho hi\n").decode()
    spec = simple_job(
        name="full", labels={"project": "x1"},
        policies={"maximumRetries": 2, "priority": 5, "leaveInQueue": True,
                  "placement": {"requirements": {"sites": ["local"]}}},
        notifications=[{"event": "jobFinished", "type": "email"}],
        inputs=[{"filename": "run.sh", "content": content, "executable": True}],
        artifacts=[{"url": "https://example.org/data.tgz", "mountpoint": "data:/data"}],
        outputFiles=["out.txt"], outputDirs=["results"],
        storage={"type": "onedata", "mountpoint": "/mnt/od", "onedata": {"provider": "p.example.org", "token": "s3cret"}},
    )
    spec["tasks"][0].update(cmd="./run.sh", env={"A": "1"}, workdir="/home/user")
    job_id = api.submit(spec)
    [job] = api.request("GET", f"/jobs/{job_id}").json()
    for key in ("labels", "policies", "notifications", "inputs", "artifacts"):
        assert job[key] == spec[key]
    assert job["outputFiles"] == [{"name": "out.txt", "url": ""}]
    assert job["outputDirs"] == [{"name": "results", "url": ""}]
    assert job["storage"]["onedata"] == {"provider": "p.example.org", "token": "***"}
    assert "s3cret" not in json.dumps(api.request("GET", "/jobs?detail=true").json())


def test_liberal_spellings_are_accepted_and_normalized(api):
    spec = {"resources": {"cpus": 2, "memory": 1.5},
            "tasks": [{"image": "busybox", "workDir": "/tmp", "args": ["-c", "echo"]},
                      {"image": "busybox", "cmd": "true"}],
            "policies": {"ignoreTaskTailures": True, "maximumTimeInQueue": -1}}
    [job] = api.request("GET", f"/jobs/{api.submit(spec)}").json()
    assert job["tasks"][0] == {"image": "busybox", "runtime": "singularity", "workdir": "/tmp", "args": ["-c", "echo"]}
    assert job["tasks"][1]["runtime"] == "singularity"
    assert job["policies"] == {"ignoreTaskFailures": True, "maximumTimeInQueue": -1}
    assert job["resources"] == {"nodes": 1, "cpus": 2, "memory": 1.5, "disk": 10}


def test_resource_alternatives(api):
    for resources in ({"cpusRange": [1, 4], "memoryPerCpu": 2},
                      {"cpusOptions": [2, 4], "memory": 4},
                      {"totalCpusRange": [4, 16], "cpus": 2, "memory": 1, "walltime": 60}):
        [job] = api.request("GET", f"/jobs/{api.submit(simple_job(resources=resources))}").json()
        assert job["resources"]["disk"] == 10
        for key, value in resources.items():
            assert job["resources"][key] == value
    assert "nodes" not in job["resources"]  # totalCpusRange jobs scale over nodes


BAD_JOBS = [
    ({"tasks": [{"image": "busybox"}]}, "resources: is required"),
    ({"resources": {"cpus": 1, "memory": 1}}, "tasks: is required"),
    (simple_job(colour="blue"), '"colour" is not an allowed field'),
    (simple_job(tasks=[{"image": "busybox", "cmnd": "x"}]), '"tasks[0].cmnd" is not an allowed field'),
    (simple_job(tasks=[]), "tasks: list should have at least 1 item"),
    (simple_job(tasks=[{"cmd": "x"}]), "tasks[0].image: is required"),
    (simple_job(tasks=[{"image": "b", "runtime": "lxc"}]), "tasks[0].runtime"),
    (simple_job(tasks=[{"image": "b", "type": "sidecar"}]), "at least one task must not be a sidecar"),
    (simple_job(tasks=[{"image": "b", "type": "openmpi"}]), "needs a cmd"),
    (simple_job(tasks=[{"image": "b", "env": {"1A": "x"}}]), "tasks[0].env.1A: is not an allowed key"),
    (simple_job(tasks=[{"image": "b", "workdir": "/a", "workDir": "/b"}]), "give only one of them"),
    (simple_job(resources={"cpus": "2", "memory": 1}), "resources.cpus: must be an integer"),
    (simple_job(resources={"cpus": 1.5, "memory": 1}), "resources.cpus: must be an integer"),
    (simple_job(resources={"cpus": True, "memory": 1}), "resources.cpus: must be an integer"),
    (simple_job(resources={"cpus": -1, "memory": 1}), "resources.cpus: input should be greater than or equal to 1"),
    (simple_job(resources={"cpus": 0, "memory": 1}), "resources.cpus"),
    (simple_job(resources={"cpus": 1, "memory": -2}), "resources.memory: must be greater than 0"),
    (simple_job(resources={"cpus": 1, "memory": "lots"}), "resources.memory: must be a number"),
    (simple_job(resources={"cpus": 1}), "exactly one of memory and memoryPerCpu"),
    (simple_job(resources={"cpus": 1, "cpusRange": [1, 2], "memory": 1}), "exactly one of cpus, cpusRange"),
    (simple_job(resources={"cpusRange": [4, 2], "memory": 1}), "minimum <= maximum"),
    (simple_job(resources={"cpus": 1, "memory": 1, "disk": 0}), "resources.disk"),
    (simple_job(resources={"cpus": 1, "memory": 1, "walltime": -5}), "resources.walltime"),
    (simple_job(name="a;rm -rf"), "name: string should match pattern"),
    (simple_job(name="x" * 513), "name: string should have at most 512 characters"),
    (simple_job(labels={"a-b": "x"}), "labels.a-b: is not an allowed key"),
    (simple_job(labels={"ab": "x y"}), "labels.ab"),
    (simple_job(policies={"maximumRetries": 7}), "policies.maximumRetries"),
    (simple_job(policies={"maximumTimeInQueue": -2}), "policies.maximumTimeInQueue"),
    (simple_job(policies={"priority": -1}), "policies.priority"),
    (simple_job(policies={"autoScalingType": "always"}), "policies.autoScalingType"),
    (simple_job(policies={"leaveInQueue": "yes"}), "policies.leaveInQueue: must be true or false"),
    (simple_job(policies={"placement": {"requirements": {"clouds": ["x"]}}}),
     '"policies.placement.requirements.clouds" is not an allowed field'),
    (simple_job(notifications=[{"event": "jobStarted", "type": "email"}]), "notifications[0].event"),
    (simple_job(inputs=[{"filename": "../escape", "content": "aGk="}]), "inputs[0].filename: must not contain '..'"),
    (simple_job(inputs=[{"filename": "/etc/passwd", "content": "aGk="}]), "not an absolute path"),
    (simple_job(inputs=[{"filename": "a/../../b", "content": "aGk="}]), "would escape the job directory"),
    (simple_job(inputs=[{"filename": "x", "content": "not base64!"}]), "inputs[0].content: must be base64"),
    (simple_job(inputs=[{"filename": "x", "content": "aGk="}, {"filename": "./x", "content": "aGk="}]),
     "distinct filenames"),
    (simple_job(artifacts=[{"url": "https://x", "mountpoint": "a/b:/data"}]), "artifacts[0].mountpoint"),
    (simple_job(artifacts=[{"url": "https://x", "mountpoint": "data:relative"}]), "artifacts[0].mountpoint"),
    (simple_job(outputFiles=["../../secret"]), "outputFiles[0]: must not contain '..'"),
    (simple_job(outputDirs=["/root"]), "outputDirs[0]: must be relative"),
    (simple_job(storage={"type": "onedata", "mountpoint": "/d"}), "needs a 'onedata' block"),
    (simple_job(storage={"type": "nfs", "mountpoint": "/d"}), "storage.type"),
    (simple_job(resources={"cpus": 1, "memory": 1}, tasks=[{"image": "b", "procsPerNode": 2}]),
     "procsPerNode must not be more than the cpus"),
    ([simple_job()], "must be a JSON object"),
]


@pytest.mark.parametrize("spec,message", BAD_JOBS, ids=[m for _, m in BAD_JOBS])
def test_bad_job_descriptions_are_rejected_naming_field_and_rule(api, spec, message):
    before = api.request("GET", "/jobs?all=true").json()
    response = api.request("POST", "/jobs", json=spec)
    assert response.status_code == 400
    assert message in response.json()["error"], response.json()
    assert api.request("GET", "/jobs?all=true").json() == before


@pytest.mark.parametrize("body,message", [
    (b"{not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b'"a string"', "must be a JSON object"),
])
def test_non_json_bodies_are_rejected(api, body, message):
    response = api.request("POST", "/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_bodies_over_one_mebibyte_are_rejected(api):
    content = base64.b64encode(b"x" * (1 << 20)).decode()
    response = api.request("POST", "/jobs", json=simple_job(inputs=[{"filename": "big", "content": content}]))
    assert response.status_code == 400
    assert "larger than the limit" in response.json()["error"]
    # Streamed without a Content-Length, too.
    response = api.request("POST", "/jobs", content=iter([b" " * (1 << 19)] * 3))
    assert response.status_code == 400
    assert api.request("GET", "/jobs?all=true").json() == []


@pytest.mark.parametrize("header", [
    None, "Bearer", "Bearer not-a-jwt", "Basic YWxpY2U6cHc=",
])
def test_missing_or_malformed_tokens_get_401(api, header):
    headers = {"Authorization": header} if header else {}
    response = api.request("GET", "/jobs", user=None, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "Authentication failure"}


def test_expired_and_foreign_tokens_get_401(api):
    from schema.identity import TokenAuthority

    expired = api.tokens.issue("alice", days=-1)
    forged = TokenAuthority(b"another server's secret, 32 bytes").issue("alice")
    for token in (expired, forged):
        response = api.request("POST", "/jobs", user=None, headers={"Authorization": f"Bearer {token}"},
                               json=simple_job())
        assert response.status_code == 401
    assert api.request("GET", "/jobs?all=true").json() == []


def test_users_see_only_their_own_jobs(api):
    mine = api.submit(user="alice")
    theirs = api.submit(user="bob")
    assert [j["id"] for j in api.request("GET", "/jobs?all=true", "alice").json()] == [mine]
    assert api.request("GET", f"/jobs/{theirs}", "alice").status_code == 404
    assert api.request("GET", f"/jobs?id={theirs}", "alice").json() == []
    assert api.request("GET", f"/jobs/{theirs}/stdout", "alice").status_code == 403
    assert api.request("GET", f"/jobs/{theirs}/stderr", "alice").status_code == 403
    assert api.request("PUT", f"/jobs/{theirs}/clone", "alice").status_code == 403
    assert api.request("PUT", f"/jobs/{theirs}/remove", "alice").status_code == 403
    deleted = api.request("DELETE", f"/jobs/{theirs}", "alice")  # as unknown: other users' ids are not told
    assert deleted.status_code == 404 and deleted.json() == {"error": "No such job(s)"}
    [job] = api.request("GET", f"/jobs/{theirs}", "bob").json()
    assert job["status"] == "idle"


def test_unknown_job_is_404_with_json_error(api):
    response = api.request("GET", "/jobs/424242")
    assert response.status_code == 404
    assert "error" in response.json()


def test_listing_filters(api):
    a = api.submit(simple_job(name="alpha", labels={"exp": "one", "run": "1"}))
    b = api.submit(simple_job(name="beta", labels={"exp": "two"}))
    c = api.submit(simple_job(name="alpha"))

    def ids(query: str) -> list[int]:
        response = api.request("GET", "/jobs" + query)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()]

    assert ids("?num=1") == [a, b, c]
    assert ids("?name=alpha") == [a, c]
    assert ids("?constraint=exp%3Done") == [a]
    assert ids("?constraint=exp%3Done&constraint=run%3D1") == [a]
    assert ids("?constraint=exp%3Done&constraint=run%3D2") == []
    assert ids("?status=idle") == [a, b, c]
    assert ids("?status=running") == []
    assert ids(f"?id={c},{a}") == [a, c]
    listed = api.request("GET", "/jobs").json()[0]
    assert "resources" not in listed and "execution" not in listed
    detailed = api.request("GET", "/jobs?detail=true").json()[0]
    assert detailed["resources"]["cpus"] == 1 and "execution" in detailed


def test_completed_num_and_all(api):
    ids = [api.submit(simple_job(name=f"j{i}")) for i in range(4)]
    for job_id in ids[:3]:
        assert api.request("DELETE", f"/jobs/{job_id}").status_code == 200

    def listed(query: str) -> list[int]:
        return [job["id"] for job in api.request("GET", "/jobs" + query).json()]

    assert listed("") == [ids[3]]
    assert len(listed("?completed=true")) == 1  # num defaults to 1
    assert listed("?completed=true&num=2") == sorted(listed("?completed=true&num=2"))
    assert set(listed("?completed=true&num=2")) <= set(ids[:3])
    assert listed("?completed=true&num=-1") == ids[:3]
    assert listed("?all=true") == ids
    assert listed("?num=1&all=true") == ids
    assert listed("?status=deleted&all=true") == ids[:3]
    assert listed(f"?id={ids[0]},{ids[3]}") == [ids[0], ids[3]]


@pytest.mark.parametrize("query,message", [
    ("?status=sleeping", "invalid status specified"),
    ("?constraint=novalue", "Invalid constraint"),
    ("?constraint=a%3Db%3Dc", "Invalid constraint"),
    ("?completed=true&num=many", "num must be an integer"),
    ("?completed=true&num=-5", "num must be an integer of at least -1"),
    ("?id=1,x", "id must be a comma-separated list"),
    ("?id=99999999999999999999999", "positive integer ids"),
    ("?workflow=true", "needs the workflow's id"),
])
def test_bad_list_parameters_get_400(api, query, message):
    response = api.request("GET", "/jobs" + query)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_workflow_parameter_lists_jobs_of_that_workflow(api):
    api.submit()
    assert api.request("GET", "/jobs?num=-1&id=1&workflow=true").json() == []


def test_delete_idle_job(api):
    job_id = api.submit()
    response = api.request("DELETE", f"/jobs/{job_id}")
    assert response.status_code == 200 and response.json() == {}
    [job] = api.request("GET", f"/jobs/{job_id}").json()
    assert (job["status"], job["statusReason"]) == ("deleted", "Job deleted by user")
    assert job["events"]["endTime"] >= job["events"]["createTime"]
    assert api.request("GET", "/jobs").json() == []
    again = api.request("DELETE", f"/jobs/{job_id}")
    assert again.status_code == 400 and "already finished" in again.json()["error"]


def test_delete_several_is_all_or_nothing(api):
    a, b = api.submit(), api.submit()
    response = api.request("DELETE", f"/jobs?id={a},{b},987654")
    assert response.status_code == 404
    assert response.json() == {"error": "No such job(s)"}
    assert {j["status"] for j in api.request("GET", "/jobs").json()} == {"idle"}
    assert api.request("DELETE", f"/jobs?id={a},{b}").status_code == 200
    assert {j["status"] for j in api.request("GET", "/jobs?all=true").json()} == {"deleted"}


def test_delete_without_ids_is_400(api):
    response = api.request("DELETE", "/jobs")
    assert response.status_code == 400
    assert "must be provided" in response.json()["error"]


def test_leave_in_queue_keeps_finished_job_until_removed(api):
    kept = api.submit(simple_job(policies={"leaveInQueue": True}))
    plain = api.submit()
    response = api.request("PUT", f"/jobs/{kept}/remove")
    assert response.status_code == 400 and "has not finished" in response.json()["error"]
    api.request("DELETE", f"/jobs?id={kept},{plain}")
    assert [j["id"] for j in api.request("GET", "/jobs").json()] == [kept]
    assert api.request("PUT", f"/jobs/{kept}/remove").json() == {}
    assert api.request("GET", "/jobs").json() == []
    response = api.request("PUT", f"/jobs/{kept}/remove")
    assert response.status_code == 400 and response.json() == {"error": "Job is no longer in the queue"}
    assert api.request("PUT", "/jobs/5555/remove").status_code == 400


def test_clone_resubmits_the_stored_description(api):
    spec = simple_job(name="orig", labels={"k": "v"})
    spec["tasks"][0]["env"] = {"X": "1"}
    original = api.submit(spec)
    api.request("DELETE", f"/jobs/{original}")
    response = api.request("PUT", f"/jobs/{original}/clone")
    assert response.status_code == 201
    clone = response.json()["id"]
    assert clone > original
    [old], [new] = api.request("GET", f"/jobs/{original}").json(), api.request("GET", f"/jobs/{clone}").json()
    for key in ("name", "labels", "tasks", "resources"):
        assert new[key] == old[key]
    assert new["status"] == "idle"
    unknown = api.request("PUT", "/jobs/5555/clone")
    assert unknown.status_code == 404 and unknown.json() == {"error": "Job does not exist"}


def test_stdout_and_stderr(api):
    job_id = api.submit()
    for stream in ("stdout", "stderr"):
        response = api.request("GET", f"/jobs/{job_id}/{stream}")
        assert response.status_code == 404
        assert response.json() == {"error": f"{stream} does not exist"}
    assert api.request("GET", "/jobs/5555/stdout").status_code == 400
    # What the agent streams lands here; reading from an offset returns only what is new.
    path = output_path(api.settings.data_dir, job_id, 0, "stdout")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"line 1\nline 2\n")
    assert api.request("GET", f"/jobs/{job_id}/stdout").text == "line 1\nline 2\n"
    assert api.request("GET", f"/jobs/{job_id}/stdout?offset=7&node=0").text == "line 2\n"
    assert api.request("GET", f"/jobs/{job_id}/stdout?offset=100").text == ""
    assert api.request("GET", f"/jobs/{job_id}/stdout?offset=-1").status_code == 400
    assert api.request("GET", f"/jobs/{job_id}/stdout?node=1").status_code == 404


def test_unknown_routes_and_methods_answer_json(api):
    missing = api.request("GET", "/nothing-here")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong = api.request("PATCH", "/jobs")
    assert wrong.status_code == 405 and "error" in wrong.json()
    assert api.request("GET", "/jobs/abc").status_code == 404


def test_openapi_document_is_generated_from_the_request_models(api):
    document = api.request("GET", "/openapi.json", user=None).json()
    assert document["openapi"].startswith("3.")
    schemas = document["components"]["schemas"]
    assert set(schemas["JobSpec"]["required"]) == {"tasks", "resources"}
    assert "cpusRange" in schemas["Resources"]["properties"]
    assert {"get", "post", "delete"} <= set(document["paths"]["/jobs"])
    assert "/jobs/{job_id}/stdout" in document["paths"]
    # What the service accepts, so that requests generated from it are meaningful.
    assert {s["type"] for s in schemas["Task"]["properties"]["args"]["anyOf"]} == {"string", "array", "null"}
    memory = schemas["Resources"]["properties"]["memory"]["anyOf"][0]
    assert (memory["minimum"], memory["maximum"]) == (0.01, 100_000)
    assert schemas["Task"]["properties"]["image"]["pattern"].startswith("^")
    assert "404" in document["paths"]["/jobs/{job_id}/clone"]["put"]["responses"]
    assert "404" in document["paths"]["/jobs/{job_id}"]["delete"]["responses"]
