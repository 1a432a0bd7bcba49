"""The data API (/v1/data, signed upload URLs, GraphQL dataObjects) on SQLite and PostgreSQL, the
real CLI's upload/ls/rm against a live server, and the store's key checks.
docs/api-decisions.md "Data"."""
import email.utils
import hashlib
import os
import subprocess
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.services.data import resolve_for_job
from gateway.settings import Settings
from gateway.storage import ObjectStore, StorageError
from schema.db import make_engine
from schema.tables import data_objects, jobs, storage_credentials, workflows
from tests.conftest import REPO, Api, simple_job
from tests.live import LiveServer

PROMINENCE = REPO / ".venv" / "bin" / "prominence"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def local(url: str) -> str:
    """The path and query of a URL the server made (its host is the public URL)."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def upload_url(api: Api, name: str, checksum: str | None = None, user: str = "alice", **claims) -> str:
    response = api.client.post("/v1/data/upload", json={"filename": name, "checksum": checksum},
                               headers=api.headers(user, **claims))
    assert response.status_code == 201, response.text
    assert set(response.json()) == {"url"}
    return response.json()["url"]


def upload(api: Api, name: str, data: bytes, user: str = "alice", checksum: bool = True, **claims):
    url = upload_url(api, name, sha(data) if checksum else None, user, **claims)
    return api.client.put(local(url), content=data)  # no Authorization header, as the CLI


def listing(api: Api, path: str = "", user: str = "alice", **claims):
    return api.client.get("/v1/data" + path, headers=api.headers(user, **claims))


def test_upload_list_download_and_delete(api):
    data = b"hello data\n" * 100
    stored = upload(api, "data.txt", data)
    assert stored.status_code == 201, stored.text
    assert stored.json()["size"] == len(data) and stored.json()["sha256"] == sha(data)

    response = listing(api)
    assert response.status_code == 200
    [item] = response.json()
    assert item["name"] == "data.txt" and item["size"] == len(data) and item["sha256"] == sha(data)
    assert email.utils.parsedate_to_datetime(item["lastModified"])  # "Tue, 15 Nov 2022 16:41:23 GMT"
    assert item["lastModified"].endswith(" GMT")

    # Replaced by a new upload of the same name; a name the query string gives works too.
    response = api.client.post("/v1/data?name=data.txt", headers=api.headers())
    assert response.status_code == 201
    assert api.client.put(local(response.json()["url"]), content=b"v2").status_code == 201
    assert [(i["name"], i["size"]) for i in listing(api).json()] == [("data.txt", 2)]

    response = api.client.delete("/v1/data/data.txt", headers=api.headers())
    assert response.status_code == 204 and response.content == b""
    assert listing(api).json() == []
    again = api.client.delete("/v1/data/data.txt", headers=api.headers())
    assert again.status_code == 400 and again.json() == {"error": "Object data.txt does not exist"}
    # and its bytes are gone from the store
    assert not list((api.settings.data_dir / "storage").rglob("data.txt"))


def test_upload_without_checksum_records_it(api):
    assert upload(api, "n.bin", b"\x00\x01", checksum=False).status_code == 201
    assert listing(api).json()[0]["sha256"] == sha(b"\x00\x01")


@pytest.mark.parametrize("name, message", [
    ("", "An object name must be specified"),
    (None, "An object name must be specified"),
    ("../x", "'..'"),
    ("a/../b", "'..'"),
    ("./a", "'.'"),
    ("a//b", "'//'"),
    ("/abs", "start or end with '/'"),
    ("dir/", "start or end with '/'"),
    ("x\x00y", "NUL"),
    ("x\ny", "control characters"),
    ("a" * 256, "longer than 255 bytes"),
    (7, "must be a string"),
])
def test_bad_names_are_refused(api, name, message):
    response = api.client.post("/v1/data/upload", json={"filename": name}, headers=api.headers(groups=("a",)))
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


def test_bad_requests(api):
    headers = api.headers()
    for body, message in [(b"not json", "must be JSON"), (b"[1]", "JSON object"),
                          (b'{"filename": "x", "other": 1}', "Unknown key(s) in the request: other"),
                          (b'{"filename": "x", "checksum": "abc"}', "64 hexadecimal digits")]:
        response = api.client.post("/v1/data/upload", content=body, headers=headers)
        assert response.status_code == 400 and message in response.json()["error"], response.text
    assert api.client.get("/v1/data").status_code == 401
    assert api.client.post("/v1/data/upload", json={"filename": "x"}).status_code == 401
    assert api.client.delete("/v1/data/x").status_code == 401


@pytest.mark.parametrize("path", ["/%2e%2e/x", "/x%00y", "/physics/%2e%2e/alice/x", "/physics//x"])
def test_traversal_and_nul_in_paths(api, path):
    headers = api.headers(groups=("physics",))
    for method in ("GET", "DELETE"):
        response = api.client.request(method, "/v1/data" + path, headers=headers)
        assert response.status_code == 400, (method, path, response.text)


def test_checksum_mismatch_is_refused_and_keeps_the_old_object(api):
    assert upload(api, "keep.txt", b"original").status_code == 201
    url = upload_url(api, "keep.txt", sha(b"something else"))
    response = api.client.put(local(url), content=b"tampered")
    assert response.status_code == 400 and "Checksum mismatch" in response.json()["error"]
    [item] = listing(api).json()
    assert item["size"] == len(b"original") and item["sha256"] == sha(b"original")
    assert not list((api.settings.data_dir / "tmp" / "uploads").iterdir())  # nothing left spooled


def test_forged_expired_and_misused_upload_urls(api):
    url = upload_url(api, "a.txt")
    path, query = local(url).split("?")
    params = dict(parse_qsl(query))
    forged = {**params, "signature": "0" * 64}
    assert api.client.put(f"{path}?{urlencode(forged)}", content=b"x").status_code == 403
    # the same signature for another object, another user or another checksum: refused
    assert api.client.put(path.replace("a.txt", "b.txt") + "?" + query, content=b"x").status_code == 403
    assert api.client.put(path.replace("/alice/", "/bob/") + "?" + query, content=b"x").status_code == 403
    assert api.client.put(f"{path}?{urlencode({**params, 'sha256': sha(b'x')})}", content=b"x").status_code == 403
    # expired
    store = api.client.app.state.store
    expired, _ = store.signed_upload_url("uploads/users/alice/a.txt", -5, {"sha256": "", "user": "alice"})
    response = api.client.put(local(expired), content=b"x")
    assert response.status_code == 403 and response.json() == {"error": "The link is invalid or has expired"}
    # a download URL is not an upload URL, nor the other way round
    download = store.signed_url("uploads/users/alice/a.txt")
    assert api.client.put(local(download), content=b"x").status_code == 403
    assert api.client.get(local(url)).status_code == 403
    assert listing(api).json() == []
    # the genuine one works, and what it stored downloads with a signed GET
    assert api.client.put(local(url), content=b"fine").status_code == 201
    assert api.client.get(local(download)).content == b"fine"


@pytest.fixture
def small_api(tmp_path):
    settings = Settings.load(data_dir=str(tmp_path / "data"), database_url=f"sqlite:///{tmp_path / 's.db'}",
                             run_provisioner=False, max_upload_bytes=100)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(client, settings)


def test_too_large_is_refused(small_api):
    api = small_api
    response = api.client.put(local(upload_url(api, "big")), content=b"x" * 101)
    assert response.status_code == 400 and "larger than the limit of 100 bytes" in response.json()["error"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(11):
            yield b"y" * 10
    response = api.client.put(local(upload_url(api, "big")), content=chunks())
    assert response.status_code == 400 and "larger than the limit" in response.json()["error"]
    assert listing(api).json() == []
    assert api.client.put(local(upload_url(api, "big")), content=b"z" * 100).status_code == 201


def test_another_users_objects_are_invisible(api):
    assert upload(api, "secret.txt", b"bob's", user="bob").status_code == 201
    assert listing(api).json() == []
    assert api.client.delete("/v1/data/secret.txt", headers=api.headers()).status_code == 400
    response = listing(api, "/bob")
    assert response.status_code == 403 and response.json() == {"error": "Not authorized to access this path"}
    response = api.client.delete("/v1/data/bob/secret.txt", headers=api.headers())
    assert response.status_code == 403 and response.json() == {"error": "Not authorized to access this object"}
    # a group called like the user reaches only the group's area, never the user's
    assert listing(api, "/bob", groups=("bob",)).json() == []
    assert api.client.delete("/v1/data/bob/secret.txt", headers=api.headers(groups=("bob",))).status_code == 400
    assert [i["name"] for i in listing(api, user="bob").json()] == ["secret.txt"]


def test_group_areas(api):
    physics = {"groups": ("physics",)}
    assert upload(api, "physics/run1/a.txt", b"a", **physics).status_code == 201
    assert upload(api, "physics/b.txt", b"bb", user="carol", **physics).status_code == 201
    assert listing(api, **physics).json() == []  # not among alice's own
    assert [i["name"] for i in listing(api, "/physics", **physics).json()] == ["physics/b.txt", "physics/run1/a.txt"]
    assert [i["name"] for i in listing(api, "/physics/run1", user="carol", **physics).json()] == ["physics/run1/a.txt"]
    assert listing(api, "/physics/run", **physics).json() == []  # a directory, not a string prefix
    assert listing(api, "/physics", user="dave", groups=("chemistry",)).status_code == 403
    response = api.client.post("/v1/data/upload", json={"filename": "physics/x"}, headers=api.headers("dave"))
    assert response.status_code == 403
    assert response.json() == {"error": "Not authorized to access upload with this path"}
    assert api.client.delete("/v1/data/physics/b.txt", headers=api.headers("dave")).status_code == 403
    assert api.client.delete("/v1/data/physics/b.txt", headers=api.headers(**physics)).status_code == 204
    assert [i["name"] for i in listing(api, "/physics", **physics).json()] == ["physics/run1/a.txt"]


def test_graphql(api):
    def gql(query, user="alice", **variables):
        response = api.client.post("/graphql", json={"query": query, "variables": variables},
                                   headers=api.headers(user, groups=("physics",)))
        assert response.status_code == 200, response.text
        return response.json()

    made = gql("mutation($n: String!, $c: String) { createUploadUrl(name: $n, checksum: $c) { name url expiresAt } }",
               n="g.txt", c=sha(b"graph"))["data"]["createUploadUrl"]
    assert made["name"] == "g.txt" and made["expiresAt"] > 0
    assert api.client.put(local(made["url"]), content=b"graph").status_code == 201
    assert upload(api, "physics/p.txt", b"p", groups=("physics",)).status_code == 201
    objects = gql("{ dataObjects { name size lastModified sha256 } }")["data"]["dataObjects"]
    assert [(o["name"], o["size"], o["sha256"]) for o in objects] == [("g.txt", 5, sha(b"graph"))]
    assert gql('{ dataObjects(prefix: "x") { name } }')["data"]["dataObjects"] == []
    assert [o["name"] for o in gql('{ dataObjects(prefix: "physics/") { name } }')["data"]["dataObjects"]] == [
        "physics/p.txt"]
    assert gql('{ dataObjects { name } }', user="bob")["data"]["dataObjects"] == []
    denied = gql('{ dataObjects(prefix: "chemistry/") { name } }')
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    bad = gql('mutation { createUploadUrl(name: "../x") { url } }')
    assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert gql('mutation { deleteDataObject(name: "g.txt") }')["data"]["deleteDataObject"] is True
    missing = gql('mutation { deleteDataObject(name: "g.txt") }')
    assert missing["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert gql("{ dataObjects { name } }")["data"]["dataObjects"] == []


def test_objects_in_jobs(api):
    """Artifacts and archive images naming uploaded objects: checked at submission, and given to
    the node as signed URLs of the owner's own objects only."""
    bad = [({"artifacts": [{"url": "bob/data.tgz"}]}, "artifacts[0].url"),
           ({"artifacts": [{"url": "file:///etc/passwd"}]}, "artifacts[0].url"),
           ({"artifacts": [{"url": ".."}]}, "artifacts[0].url"),
           ({"tasks": [{"image": "localhost/prominence-upload:abc"}]}, "tasks[0].image"),
           ({"tasks": [{"image": "../x.tar"}]}, "tasks[0].image")]
    for extra, field in bad:
        response = api.request("POST", "/jobs", json=simple_job(**extra))
        assert response.status_code == 400 and field in response.json()["error"], response.text
    spec = simple_job(artifacts=[{"url": "data.tgz"}, {"url": "https://example.org/x.tgz"}],
                      tasks=[{"image": "img.tar", "runtime": "podman"}, {"image": "busybox"}])
    assert upload(api, "data.tgz", b"artifact").status_code == 201
    assert upload(api, "img.tar", b"image").status_code == 201
    api.submit(spec)
    store = api.client.app.state.store
    resolved, images = resolve_for_job(store, "alice", spec, 3600)
    first = urlsplit(resolved["artifacts"][0]["url"])
    assert first.path == "/v1/storage/uploads/users/alice/data.tgz"
    assert resolved["artifacts"][1] == {"url": "https://example.org/x.tgz"}
    assert list(images) == ["img.tar"]
    assert urlsplit(images["img.tar"]).path == "/v1/storage/uploads/users/alice/img.tar"
    assert api.client.get(local(resolved["artifacts"][0]["url"])).content == b"artifact"  # no token
    # bob's job naming the same object gets bob's (missing) one, never alice's
    other, _ = resolve_for_job(store, "bob", spec, 3600)
    assert api.client.get(local(other["artifacts"][0]["url"])).status_code == 404


def refused(response, error: str) -> None:
    assert response.status_code == 400 and response.json() == {"error": error}, response.text


def owner_groups(api: Api, table, row_id: int) -> list[str]:
    with api.client.app.state.engine.connect() as connection:
        return connection.execute(select(table.c.owner_groups).where(table.c.id == row_id)).scalar_one()


def post(api: Api, path: str, body: dict, user: str = "alice", groups: tuple[str, ...] = ()):
    return api.client.post("/v1" + path, json=body, headers=api.headers(user, groups=groups))


def test_objects_a_job_names_must_exist_at_submission(api):
    """A missing uploaded object is refused at submission, naming the field, not left to fail at
    stage-in: for POST /v1/jobs, clone and GraphQL's createJob."""
    missing_artifact = simple_job(artifacts=[{"url": "https://example.org/x"}, {"url": "data.tgz"}])
    missing_image = simple_job(tasks=[{"image": "busybox"}, {"image": "img.tar", "runtime": "podman"}])
    refused(api.request("POST", "/jobs", json=missing_artifact),
            "Invalid job description: artifacts[1].url: no uploaded object named data.tgz")
    refused(api.request("POST", "/jobs", json=missing_image),
            "Invalid job description: tasks[1].image: no uploaded object named img.tar")
    # bob's objects of those names are not alice's
    assert upload(api, "data.tgz", b"bob's", user="bob").status_code == 201
    assert upload(api, "img.tar", b"bob's", user="bob").status_code == 201
    refused(api.request("POST", "/jobs", json=missing_artifact),
            "Invalid job description: artifacts[1].url: no uploaded object named data.tgz")
    assert api.submit(missing_image, user="bob")
    # once uploaded, accepted; the first missing one is named
    assert upload(api, "data.tgz", b"alice's").status_code == 201
    both = simple_job(artifacts=[{"url": "data.tgz"}], tasks=[{"image": "img.tar", "runtime": "podman"}])
    refused(api.request("POST", "/jobs", json=both), "Invalid job description: tasks[0].image: no uploaded object named "
                                                     "img.tar")
    assert upload(api, "img.tar", b"alice's").status_code == 201
    job_id = api.submit(both)
    # a clone checks again: the image was deleted meanwhile
    assert api.client.delete("/v1/data/img.tar", headers=api.headers()).status_code == 204
    refused(api.request("PUT", f"/jobs/{job_id}/clone"),
            "Invalid job description: tasks[0].image: no uploaded object named img.tar")
    response = api.client.post("/graphql", headers=api.headers(), json={
        "query": "mutation ($input: JSON!) { createJob(input: $input) { id } }", "variables": {"input": both}})
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["message"] == "Invalid job description: tasks[0].image: no uploaded object named img.tar"


def test_group_objects_in_jobs(api):
    """`<group>/path` names an object of a group area: usable by a job whose submitting token was
    in that group (the job records the token's groups), refused at submission otherwise; at claim
    it becomes a signed URL of the group's area, and the job token carries the job's groups."""
    from tests.test_agent_protocol import add_node, agent, assign

    physics = ("physics",)
    assert upload(api, "physics/data.tgz", b"shared data", user="carol", groups=physics).status_code == 201
    assert upload(api, "physics/img/bb.tar", b"shared image", user="carol", groups=physics).status_code == 201
    spec = simple_job(artifacts=[{"url": "physics/data.tgz", "mountpoint": "data:/mnt/data"}],
                      tasks=[{"image": "physics/img/bb.tar", "runtime": "podman"}])
    response = post(api, "/jobs", spec, groups=("chem", "physics"))
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert owner_groups(api, jobs, job_id) == ["chem", "physics"]
    assert owner_groups(api, jobs, api.submit()) == []  # a token without groups
    # not in the group at submission (another group, or none): refused, naming the field
    for groups in [("chem",), ()]:
        refused(post(api, "/jobs", spec, groups=groups),
                "Invalid job description: artifacts[0].url: physics/data.tgz is in the area of group physics, and "
                "the submitting token is not in that group")
    refused(post(api, "/jobs", simple_job(tasks=[{"image": "physics/img/bb.tar", "runtime": "podman"}]), "dave"),
            "Invalid job description: tasks[0].image: physics/img/bb.tar is in the area of group physics, and the "
            "submitting token is not in that group")
    refused(post(api, "/jobs", simple_job(artifacts=[{"url": "physics/nope.tgz"}]), groups=physics),
            "Invalid job description: artifacts[0].url: no uploaded object named physics/nope.tgz")
    # an image ending .tar is an uploaded archive, with or without '/' (as the real server's)
    refused(post(api, "/jobs", simple_job(tasks=[{"image": "docker.io/library/x.tar"}])),
            "Invalid job description: tasks[0].image: docker.io/library/x.tar is in the area of group docker.io, "
            "and the submitting token is not in that group")
    refused(post(api, "/jobs", simple_job(artifacts=[{"url": "s3://bucket/x"}])),
            "Invalid job description: artifacts[0].url: must be an http(s) URL or the name of an uploaded object "
            "(data.tgz, <group>/data.tgz)")

    node_id, headers = add_node(api)
    assert agent(api, "POST", "/register", headers, json={"runtimes": {"podman": "4"}}).status_code == 200
    assign(api, [job_id], node_id)
    [claimed] = agent(api, "POST", "/claim?wait=0", headers).json()["jobs"]
    url = claimed["spec"]["artifacts"][0]["url"]
    assert urlsplit(url).path == "/v1/storage/uploads/groups/physics/data.tgz"
    assert claimed["spec"]["artifacts"][0]["mountpoint"] == "data:/mnt/data"
    assert api.client.get(local(url)).content == b"shared data"  # no token
    assert list(claimed["images"]) == ["physics/img/bb.tar"]
    assert api.client.get(local(claimed["images"]["physics/img/bb.tar"])).content == b"shared image"
    import jwt
    assert jwt.decode(claimed["token"], options={"verify_signature": False})["groups"] == ["chem", "physics"]
    # the job's token sees the group's area, as its submitter did
    listed = api.client.get("/v1/data/physics", headers={"Authorization": f"Bearer {claimed['token']}"})
    assert [o["name"] for o in listed.json()] == ["physics/data.tgz", "physics/img/bb.tar"]
    # without the group among the job's, a group name never reaches the group's area
    store = api.client.app.state.store
    other, images = resolve_for_job(store, "alice", spec, 3600, ("chem",))
    assert urlsplit(other["artifacts"][0]["url"]).path == "/v1/storage/uploads/users/alice/physics/data.tgz"
    assert api.client.get(local(other["artifacts"][0]["url"])).status_code == 404
    assert api.client.get(local(images["physics/img/bb.tar"])).status_code == 404


def test_workflow_jobs_keep_the_submitters_groups_and_name_objects_that_exist(api):
    """A workflow keeps its submitter's groups and gives them to each of its jobs, also those
    created later (after a dependency, by a factory, by a re-run: the re-runner's); the objects
    its jobs name (a factory's parameters substituted) are checked at submission."""
    from tests.test_workflows import finish, job, wf_jobs

    physics = ("physics",)
    assert upload(api, "physics/in.tgz", b"in", groups=physics).status_code == 201
    for i in (1, 2):
        assert upload(api, f"data_{i}.tgz", b"%d" % i).status_code == 201
    spec = {"name": "w", "jobs": [job("a", artifacts=[{"url": "physics/in.tgz"}]),
                                  job("s", "echo $x", artifacts=[{"url": "data_$x.tgz"}, {"url": "physics/in.tgz"}])],
            "dependencies": {"a": ["s"]}, "factories": [{"type": "parameterSweep", "name": "f", "jobs": ["s"],
                                                         "parameters": [{"name": "x", "start": 1, "end": 3,
                                                                         "step": 1}]}]}
    refused(post(api, "/workflows", spec, groups=physics),
            "Invalid workflow description: jobs[1].artifacts[0].url (instance 2 of factory f): no uploaded object "
            "named data_3.tgz")
    assert upload(api, "data_3.tgz", b"3").status_code == 201
    refused(post(api, "/workflows", spec, groups=("chem",)),
            "Invalid workflow description: jobs[0].artifacts[0].url: physics/in.tgz is in the area of group "
            "physics, and the submitting token is not in that group")
    refused(post(api, "/workflows", {"name": "x", "jobs": [job("a"), {**job("b"), "tasks": [{"image": "b.tgz"}]}]}),
            "Invalid workflow description: jobs[1].tasks[0].image: no uploaded object named b.tgz")
    response = post(api, "/workflows", spec, groups=("physics", "chem"))
    assert response.status_code == 201, response.text
    workflow_id = response.json()["id"]
    assert owner_groups(api, workflows, workflow_id) == ["physics", "chem"]
    first = wf_jobs(api, workflow_id)
    assert sorted(first) == ["w/a"] and owner_groups(api, jobs, first["w/a"]["id"]) == ["physics", "chem"]
    finish(api, first["w/a"]["id"])  # the engine (no token at hand) creates the factory's instances
    later = wf_jobs(api, workflow_id)
    assert sorted(later) == ["w/a", "w/s/0", "w/s/1", "w/s/2"]
    assert all(owner_groups(api, jobs, j["id"]) == ["physics", "chem"] for j in later.values())
    for name in ("w/s/0", "w/s/1"):
        finish(api, later[name]["id"])
    finish(api, later["w/s/2"]["id"], "failed")
    # a re-run: the re-runner's groups, checked again
    refused(api.client.put(f"/v1/workflows/{workflow_id}", headers=api.headers()),
            "Invalid workflow description: jobs[0].artifacts[0].url: physics/in.tgz is in the area of group "
            "physics, and the submitting token is not in that group")
    response = api.client.put(f"/v1/workflows/{workflow_id}", headers=api.headers(groups=physics))
    assert response.status_code == 200, response.text
    rerun = response.json()["id"]
    assert owner_groups(api, workflows, rerun) == ["physics"]
    assert [owner_groups(api, jobs, j["id"]) for j in wf_jobs(api, rerun).values()] == [["physics"]]


def test_the_store_follows_no_links(tmp_path):
    store = ObjectStore(tmp_path / "storage", b"s" * 32, "http://x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text("secret")
    base = tmp_path / "storage" / "prominence"
    (base / "uploads" / "users").mkdir(parents=True)
    os.symlink(outside, base / "uploads" / "users" / "mallory")
    os.symlink(outside / "passwd", base / "uploads" / "file")
    for key in ("uploads/users/mallory/passwd", "uploads/file"):
        with pytest.raises(StorageError):
            store.get(key)
        with pytest.raises(StorageError):
            store.put(key, [b"x"])
    for key in ("../x", "a/../b", "a//b", "/a", "a\x00b"):
        with pytest.raises(StorageError):
            store.get(key)
    assert (outside / "passwd").read_text() == "secret"
    assert store.get("uploads/none") is None


def test_storage_credentials_are_write_only(tmp_path):
    data_dir, url = tmp_path / "data", f"sqlite:///{tmp_path / 'c.db'}"
    secret = "very-secret-value-123"
    command = [sys.executable, "-m", "gateway.cli", "storage"]
    done = subprocess.run(check=False, args=[*command, "set-credentials", "--data-dir", str(data_dir), "--database-url", url],
                          input=f"key: AKIDEXAMPLE\nsecret: {secret}\n", capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout + done.stderr
    shown = subprocess.run(check=False, args=[*command, "show", "--data-dir", str(data_dir), "--database-url", url],
                           capture_output=True, text=True, cwd=REPO)
    assert shown.stdout.strip() == "credentials: set" and secret not in shown.stdout
    with make_engine(url).connect() as connection:
        sealed = connection.execute(select(storage_credentials.c.credentials)).scalar_one()
    assert secret not in sealed and "AKIDEXAMPLE" not in sealed
    bad = subprocess.run(check=False, args=[*command, "set-credentials", "--data-dir", str(data_dir), "--database-url", url],
                         input="key: a\n", capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "key" in bad.stderr


# -- the real CLI against a live server --------------------------------------------------------------

def prominence(server: LiveServer, home, token: str, *args: str) -> subprocess.CompletedProcess:
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "PROMINENCE_URL": f"{server.url}/v1", "PROMINENCE_TOKEN": token}
    return subprocess.run(check=False, args=[str(PROMINENCE), *args], env=env, capture_output=True, text=True, timeout=60, cwd=home)


def test_cli_upload_ls_rm(tmp_path, database_url):
    with LiveServer(tmp_path / "data", database_url) as server:
        alice = server.token("alice", "--group", "physics")
        home = tmp_path / "home"
        run = lambda *args: prominence(server, home, alice, *args)
        home.mkdir()
        (home / "input.dat").write_bytes(os.urandom(300_000))
        done = run("upload", "--name", "input.dat", "--filename", "input.dat")
        assert done.returncode == 0 and done.stdout.strip() == "Success", done.stdout + done.stderr
        done = run("upload", "--name", "physics/shared.dat", "--filename", "input.dat")
        assert done.stdout.strip() == "Success", done.stdout + done.stderr
        assert run("ls").stdout.split() == ["input.dat"]
        words = run("ls", "-l").stdout.split()
        assert words[:2] == ["input.dat", "300000"] and words[-1] == "GMT"
        assert run("ls", "physics").stdout.split() == ["physics/shared.dat"]
        assert run("ls", "chemistry").stdout.strip() == "Error: Not authorized to access this path"
        # a checksum the file does not have: refused, and nothing replaced
        done = run("upload", "--name", "input.dat", "--filename", "input.dat", "--checksum", "0" * 64)
        assert done.returncode == 1 and "400" in done.stdout and "Success" not in done.stdout, done.stdout
        assert run("ls", "-l").stdout.split()[1] == "300000"
        with httpx_client(server, alice) as http:
            [item] = http.get("/data").json()
            assert item["sha256"] == sha((home / "input.dat").read_bytes())
        assert run("rm", "input.dat").stdout.strip() == "Success"
        assert run("ls").stdout.strip() == ""
        assert run("rm", "input.dat").stdout.strip() == "Error: Object input.dat does not exist"
        assert run("rm", "physics/shared.dat").stdout.strip() == "Success"


def httpx_client(server: LiveServer, token: str):
    import httpx

    return httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_index_rows_match_the_store(api):
    assert upload(api, "x.txt", b"123").status_code == 201
    with make_engine(api.settings.database_url).connect() as connection:
        row = connection.execute(select(data_objects)).one()
    assert (row.key, row.area, row.name, row.size, row.uploader) == (
        "uploads/users/alice/x.txt", "users/alice", "x.txt", 3, "alice")
    assert (api.settings.data_dir / "storage" / "prominence" / "uploads" / "users" / "alice" / "x.txt").read_bytes() == b"123"


# -- uploaded objects used by real jobs on the local cloud ---------------------------------------------

def renamed_image_archive(image: str, path, claimed_name: str) -> bytes:
    """`podman save` of the local busybox image, whose manifest claims `claimed_name` (an upload
    must never take over a name other jobs use)."""
    import io
    import json
    import tarfile

    from tests.images import podman_env

    subprocess.run(args=["podman", "save", "--format", "docker-archive", "-o", str(path), image], env=podman_env(),
                   check=True, capture_output=True)
    out = io.BytesIO()
    with tarfile.open(path) as source, tarfile.open(fileobj=out, mode="w") as target:
        for member in source.getmembers():
            if member.name == "manifest.json":
                manifest = json.load(source.extractfile(member))
                manifest[0]["RepoTags"] = [claimed_name]
                data = json.dumps(manifest).encode()
                member.size = len(data)
                target.addfile(member, io.BytesIO(data))
            else:
                target.addfile(member, source.extractfile(member) if member.isfile() else None)
    return out.getvalue()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_uploaded_artifact_and_image_in_a_real_job(tmp_path):
    import httpx

    from tests.conftest import tgz
    from tests.images import busybox_image, podman_env
    from tests.jobs import job, submit, wait_for
    from tests.test_e2e_jobs import serve

    image = busybox_image()
    victim = "localhost/prominence-victim:latest"
    subprocess.run(check=False, args=["podman", "rmi", "-f", victim], env=podman_env(), capture_output=True)
    archive = renamed_image_archive(image, tmp_path / "saved.tar", victim)
    loaded = f"localhost/prominence-upload:{hashlib.sha256(archive).hexdigest()}"
    subprocess.run(check=False, args=["podman", "rmi", "-f", loaded], env=podman_env(), capture_output=True)  # loaded, not cached
    servers = serve(tmp_path, f"sqlite:///{tmp_path / 'state.db'}")
    server = next(servers)
    try:
        token = server.token("alice")
        home = tmp_path / "home"
        home.mkdir()
        (home / "data.tgz").write_bytes(tgz({"data/hello.txt": b"hello from an upload\n"}))
        (home / "bb.tar").write_bytes(archive)
        for name in ("data.tgz", "bb.tar"):
            done = prominence(server, home, token, "upload", "--name", name, "--filename", name)
            assert done.stdout.strip() == "Success", done.stdout + done.stderr
        with httpx.Client(base_url=server.url + "/v1", headers={"Authorization": f"Bearer {token}"},
                          timeout=30) as client:
            # the archive as the task's image, the uploaded .tgz as an artifact mounted in the container
            job_id = submit(client, job("bb.tar", {"cmd": "sh -c 'cat /mnt/data/hello.txt; "
                                                          "cat /mnt/data/hello.txt > out.txt'", "runtime": "podman"},
                                        artifacts=[{"url": "data.tgz", "mountpoint": "data:/mnt/data"}],
                                        outputFiles=["out.txt"]))
            done = wait_for(client, job_id, timeout=300)
            assert done["status"] == "completed", done
            assert client.get(f"/jobs/{job_id}/stdout").text == "hello from an upload\n"
            [task] = done["execution"]["tasks"]
            assert task["exitCode"] == 0 and task["imagePullStatus"] == "completed" and task["imageSha256"]
            # loaded under its content's name only: the name the archive claimed was not taken
            exists = subprocess.run(check=False, args=["podman", "image", "exists", victim], env=podman_env())
            assert exists.returncode == 1
            assert subprocess.run(check=False, args=["podman", "image", "exists", loaded], env=podman_env()).returncode == 0

            # the real CLI downloads the job's output without a token
            done = prominence(server, home, token, "download", str(job_id))
            assert done.returncode == 0, done.stdout + done.stderr
            assert (home / "out.txt").read_text() == "hello from an upload\n"

            # an artifact that is not among the user's objects (bob's, or none): refused at submission
            bob = server.token("bob")
            bob_home = tmp_path / "bob"
            bob_home.mkdir()
            (bob_home / "mine.txt").write_text("bob's")
            assert prominence(server, bob_home, bob, "upload", "--name", "mine.txt",
                              "--filename", "mine.txt").stdout.strip() == "Success"
            response = client.post("/jobs", json=job(image, {"cmd": "cat mine.txt"}, artifacts=[{"url": "mine.txt"}]))
            assert response.status_code == 400 and response.json() == {
                "error": "Invalid job description: artifacts[0].url: no uploaded object named mine.txt"}
    finally:
        next(servers, None)
        subprocess.run(check=False, args=["podman", "rmi", "-f", victim, loaded], env=podman_env(), capture_output=True)
