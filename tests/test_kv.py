"""The key-value store (reference 1.4 and 6; docs/api-decisions.md "Key-value store") on SQLite and
PostgreSQL: /v1/kv as curl and the real PROMINENCE CLI use it, GraphQL through gql, compare-and-swap
under a real race, and a real job that uses its PROMINENCE_TOKEN to set and read a key."""
import base64
import subprocess
import threading

import httpx
import pytest
from gql import Client, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXTransport

from gateway.services.kv import KvConflict, KvService, normalize_key
from provisioner.drivers.local import LocalNodeDriver
from schema.db import make_engine, upgrade
from schema.identity import Identity
from tests.images import busybox_image
from tests.jobs import job, submit, wait_for
from tests.live import LiveServer
from tests.test_cli import PROMINENCE


def set_raw(api, key: str, body: bytes, user: str = "alice", params: dict | None = None):
    """POST a raw body with no Content-Type, as the CLI does."""
    return api.request("POST", f"/kv/{key}", user, content=body, params=params)


def keys(api, path: str = "", user: str = "alice", **params) -> list:
    response = api.request("GET", f"/kv{path}", user, params={"list": "true", **params})
    assert response.status_code == 200, response.text
    return response.json()


# --- /v1/kv -----------------------------------------------------------------------------------

def test_set_then_get_with_a_leading_double_slash_collapsed(api):
    response = set_raw(api, "/a/b", b"hello")  # the CLI's `kv set /a/b hello`: POST /kv//a/b
    assert response.status_code == 201 and response.json() == {}
    assert "content-type" not in response.request.headers
    for path in ("/kv/a/b", "/kv//a/b", "/kv///a/b"):
        got = api.request("GET", path)
        assert got.status_code == 200 and got.content == b"hello"
        assert got.headers["content-type"] == "text/plain; charset=utf-8"
    assert set_raw(api, "a/b", b"again").status_code == 201  # the same key
    assert api.request("GET", "/kv//a/b").content == b"again"
    assert keys(api) == ["/a/b"]


def test_any_bytes_round_trip(api):
    value = bytes(range(256)) * 3  # NUL, invalid UTF-8, everything
    assert set_raw(api, "bin", value).status_code == 201
    got = api.request("GET", "/kv/bin")
    assert got.content == value and got.headers["content-type"] == "application/octet-stream"
    assert set_raw(api, "text", "ключ é ✓".encode()).status_code == 201
    assert api.request("GET", "/kv/text").text == "ключ é ✓"
    # JSON cannot hold bytes: the values listing shows invalid UTF-8 as U+FFFD
    listed = dict(next(iter(item.items())) for item in keys(api, values="true"))
    assert listed["/text"] == "ключ é ✓" and listed["/bin"] == value.decode(errors="replace")


@pytest.mark.parametrize("method,path,body,status,error", [
    ("GET", "/kv/nosuch", None, 404, "No such key"),
    ("GET", "/kv", None, 400, "Key not specified"),
    ("GET", "/kv/", None, 400, "Key not specified"),
    ("GET", "/kv//", None, 400, "Key not specified"),
    ("POST", "/kv", b"x", 400, "Key not specified"),
    ("POST", "/kv/", b"x", 400, "Key not specified"),
    ("DELETE", "/kv", None, 400, "Key not specified"),
    ("DELETE", "/kv//", None, 400, "Key not specified"),
    ("POST", "/kv/k", b"", 400, "No value provided"),
    ("POST", "/kv/k", b"x" * 16001, 400, "Content of value too large"),
    ("POST", "/kv/k", b"x" * (2 << 20), 400, "Content of value too large"),
    ("GET", "/kv/a%00b", None, 400, "Invalid key: it must not contain control characters (U+0000)"),
    ("POST", "/kv/a%00b", b"x", 400, "Invalid key: it must not contain control characters (U+0000)"),
    ("POST", "/kv/a%01", b"x", 400, "Invalid key: it must not contain control characters (U+0001)"),
    ("POST", "/kv/a%0Db", b"x", 400, "Invalid key: it must not contain control characters (U+000D)"),
    # a line feed never reaches the route: the /v1 mount's path pattern stops at it (docs/api-decisions.md)
    ("POST", "/kv/a%0Ab", b"x", 404, "Not Found"),
    ("POST", "/kv/a%7F", b"x", 400, "Invalid key: it must not contain control characters (U+007F)"),
    ("POST", "/kv/a%C2%85", b"x", 400, "Invalid key: it must not contain control characters (U+0085)"),
    ("POST", "/kv/a%FFb", b"x", 400, "Invalid key: it must be UTF-8"),
    ("GET", "/kv/%ED%A0%80", None, 400, "Invalid key: it must be UTF-8"),  # an encoded surrogate
    ("POST", "/kv/" + "k" * 1025, b"x", 400, "Invalid key: it must be at most 1024 bytes of UTF-8"),
    ("POST", "/kv/" + "é" * 513, b"x", 400, "Invalid key: it must be at most 1024 bytes of UTF-8"),
    ("DELETE", "/kv/a%00?prefix=true", None, 400, "Invalid key: it must not contain control characters (U+0000)"),
    ("GET", "/kv/a%00?list=true", None, 400, "Invalid key: it must not contain control characters (U+0000)"),
])
def test_errors(api, method, path, body, status, error):
    response = api.request(method, path, content=body)
    assert (response.status_code, response.json()) == (status, {"error": error})


def test_the_limits_themselves_are_allowed(api):
    assert set_raw(api, "big", b"\x00" * 16000).status_code == 201
    assert len(api.request("GET", "/kv/big").content) == 16000
    assert set_raw(api, "k" * 1024, b"x").status_code == 201
    assert set_raw(api, "//" + "é" * 512, b"x").status_code == 201
    assert set_raw(api, "sp ace/%3F%23%25/a%2Fb", b"x").status_code == 201  # encoded ? # % / are path characters
    assert set(keys(api)) == {"/big", "/" + "k" * 1024, "/" + "é" * 512, "/sp ace/?#%/a/b"}
    # a body streamed without a Content-Length is counted as it arrives
    chunks = iter([b"x" * 10000, b"x" * 10000])
    response = api.request("POST", "/kv/streamed", content=chunks)
    assert (response.status_code, response.json()) == (400, {"error": "Content of value too large"})


def test_no_token_is_refused(api):
    for method in ("GET", "POST", "DELETE"):
        response = api.request(method, "/kv/a", user=None, content=b"x" if method == "POST" else None)
        assert response.status_code == 401 and "error" in response.json()


def test_list_prefixes_values_and_hidden_keys(api):
    for key in ("a/b", "a/c", "ab", "b", "_internal_/1/host/0", "a/x_internal_y", "é/1"):
        assert set_raw(api, key, f"v-{key}".encode()).status_code == 201
    assert keys(api) == ["/a/b", "/a/c", "/ab", "/b", "/é/1"]  # code point order, _internal_ hidden
    assert keys(api, "/a") == ["/a/b", "/a/c", "/ab"]  # a string prefix, as etcd's
    assert keys(api, "/a/") == ["/a/b", "/a/c"]
    assert keys(api, "//a/") == ["/a/b", "/a/c"]
    assert keys(api, "/a/c") == ["/a/c"]
    assert keys(api, "/é") == ["/é/1"]
    assert keys(api, "/nothing") == []
    assert keys(api, "/a/", values="true") == [{"/a/b": "v-a/b"}, {"/a/c": "v-a/c"}]
    assert api.request("GET", "/kv/_internal_/1/host/0").content == b"v-_internal_/1/host/0"  # hidden, not gone
    assert api.request("GET", "/kv/a?list=false").status_code == 404  # list=false: the key `a` itself


def test_delete_and_delete_by_prefix(api):
    for key in ("a/b", "a/c", "ab", "b", "a/_internal_"):
        set_raw(api, key, b"x")
    response = api.request("DELETE", "/kv/b")  # the CLI strips the leading slash
    assert (response.status_code, response.json()) == (200, {})
    assert api.request("GET", "/kv/b").status_code == 404
    assert api.request("DELETE", "/kv/b").status_code == 200  # not there: nothing to do
    response = api.request("DELETE", "/kv/a/", params={"prefix": "True"})  # `kv delete --prefix /a/`
    assert (response.status_code, response.json()) == (200, {})
    assert keys(api) == ["/ab"] and api.request("GET", "/kv/a/_internal_").status_code == 404
    set_raw(api, "z/1", b"x")
    assert api.request("DELETE", "/kv//", params={"prefix": "True"}).status_code == 200  # everything
    assert keys(api) == []


def test_compare_and_swap(api):
    assert set_raw(api, "lock", b"free").status_code == 201
    assert set_raw(api, "lock", b"mine", params={"prev": "free"}).status_code == 201
    assert api.request("GET", "/kv/lock").content == b"mine"
    failed = set_raw(api, "lock", b"theirs", params={"prev": "free"})
    assert (failed.status_code, failed.json()) == (400, {"error": "Atomic replacement not successful"})
    assert api.request("GET", "/kv/lock").content == b"mine"
    failed = set_raw(api, "nosuch", b"x", params={"prev": "free"})
    assert (failed.status_code, failed.json()) == (400, {"error": "Atomic replacement not successful"})
    assert api.request("GET", "/kv/nosuch").status_code == 404
    # an empty prev: only if the key does not exist yet
    assert set_raw(api, "new", b"first", params={"prev": ""}).status_code == 201
    assert set_raw(api, "new", b"second", params={"prev": ""}).status_code == 400
    assert api.request("GET", "/kv/new").content == b"first"
    # prev is compared byte for byte; percent-encoding says any bytes
    set_raw(api, "bin", b"\xff\x00 +")
    assert api.request("POST", "/kv/bin?prev=%FF%00+%2B", content=b"next").status_code == 201
    assert api.request("GET", "/kv/bin").content == b"next"


def test_each_user_has_their_own_namespace(api):
    set_raw(api, "shared/name", b"alice's", user="alice")
    assert api.request("GET", "/kv/shared/name", user="bob").status_code == 404
    assert keys(api, user="bob") == []
    assert api.request("DELETE", "/kv/shared", user="bob", params={"prefix": "true"}).status_code == 200
    assert set_raw(api, "shared/name", b"x", user="bob", params={"prev": "alice's"}).status_code == 400
    set_raw(api, "shared/name", b"bob's", user="bob")
    assert api.request("GET", "/kv/shared/name", user="alice").content == b"alice's"
    assert api.request("GET", "/kv/shared/name", user="bob").content == b"bob's"
    assert keys(api, user="alice") == keys(api, user="bob") == ["/shared/name"]


def test_racing_compare_and_swaps_have_one_winner(database_url):
    """Two clients, the same prev, at the same moment, 100 times: exactly one wins each round."""
    engine = make_engine(database_url)
    upgrade(engine)
    service, who, key = KvService(engine), Identity("alice"), normalize_key("counter")
    service.set_sync(who, key, b"0", None)
    rounds, barrier = 100, threading.Barrier(2)
    wins: list[list[int]] = [[], []]

    def client(me: int) -> None:
        for n in range(rounds):
            barrier.wait()
            try:
                service.set_sync(who, key, f"{n + 1}".encode(), f"{n}".encode())
                wins[me].append(n)
            except KvConflict:
                pass
            barrier.wait()  # both have tried before the next round

    threads = [threading.Thread(target=client, args=(me,)) for me in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert sorted(wins[0] + wins[1]) == list(range(rounds))  # each round once, never twice
        assert service.get_sync(who, key).value == str(rounds).encode()
    finally:
        engine.dispose()


# --- GraphQL and the real CLI against a live server --------------------------------------------

@pytest.fixture
def live(tmp_path, database_url):
    with LiveServer(tmp_path / "data", database_url) as server:
        yield server


def graphql(server: LiveServer, user: str = "alice") -> Client:
    return Client(transport=HTTPXTransport(url=f"{server.url}/graphql",
                                           headers={"Authorization": f"Bearer {server.token(user)}"}))


def run(client: Client, query: str, **variables):
    document = gql(query)
    document.variable_values = variables
    return client.execute(document)


def failure(client: Client, query: str, **variables) -> tuple[dict | None, list[dict]]:
    with pytest.raises(TransportQueryError) as raised:
        run(client, query, **variables)
    return raised.value.data, raised.value.errors


SET = """mutation ($key: String!, $value: String, $valueBase64: String, $prev: String, $prevBase64: String) {
    setKv(key: $key, value: $value, valueBase64: $valueBase64, prev: $prev, prevBase64: $prevBase64) {
        key value valueBase64 size updatedAt } }"""
GET = "query ($key: String!) { kv(key: $key) { key value valueBase64 size updatedAt } }"


def test_graphql(live):
    alice, bob = graphql(live), graphql(live, "bob")
    entry = run(alice, SET, key="//a/b", value="héllo")["setKv"]
    assert entry["key"] == "/a/b" and entry["value"] == "héllo" and entry["size"] == 6
    assert base64.b64decode(entry["valueBase64"]) == "héllo".encode() and entry["updatedAt"].endswith("+00:00")
    assert run(alice, GET, key="a/b")["kv"] == entry
    assert run(alice, GET, key="nosuch")["kv"] is None
    assert run(bob, GET, key="a/b")["kv"] is None  # another user's key: not there for bob
    # the same store as /v1
    headers = {"Authorization": f"Bearer {live.token('alice')}"}
    assert httpx.get(f"{live.url}/v1/kv//a/b", headers=headers).text == "héllo"
    httpx.post(f"{live.url}/v1/kv/bin", content=b"\xff\x00", headers=headers)

    # a value that is not UTF-8: null with an error, and its base64
    data, errors = failure(alice, GET, key="bin")
    assert data == {"kv": {"key": "/bin", "value": None, "valueBase64": "/wA=", "size": 2,
                           "updatedAt": data["kv"]["updatedAt"]}}
    assert [(e["path"], e["extensions"]["code"]) for e in errors] == [(["kv", "value"], "INVALID_STATE")]
    set_base64 = "mutation ($b: String) { setKv(key: \"bin2\", valueBase64: $b) { valueBase64 size } }"
    assert run(alice, set_base64, b="AAEC/w==")["setKv"] == {"valueBase64": "AAEC/w==", "size": 4}

    for key in ("a/c", "ab", "_internal_/x"):
        run(alice, SET, key=key, value=key)
    assert run(alice, "{ kvKeys }")["kvKeys"] == ["/a/b", "/a/c", "/ab", "/bin", "/bin2"]
    assert run(alice, '{ kvKeys(prefix: "/a/") }')["kvKeys"] == ["/a/b", "/a/c"]
    assert run(alice, '{ kvEntries(prefix: "a") { key value } }')["kvEntries"] == [
        {"key": "/a/b", "value": "héllo"}, {"key": "/a/c", "value": "a/c"}, {"key": "/ab", "value": "ab"}]
    assert run(bob, "{ kvKeys }")["kvKeys"] == []

    # compare-and-swap
    assert run(alice, SET, key="a/c", value="new", prev="a/c")["setKv"]["value"] == "new"
    assert run(alice, SET, key="bin", value="text", prevBase64="/wA=")["setKv"]["value"] == "text"
    assert run(alice, SET, key="fresh", value="1", prev="")["setKv"]["value"] == "1"
    for variables, code, message in (
            ({"key": "a/c", "value": "x", "prev": "a/c"}, "CONFLICT", "Atomic replacement not successful"),
            ({"key": "fresh", "value": "x", "prev": ""}, "CONFLICT", "Atomic replacement not successful"),
            ({"key": "k", "value": ""}, "BAD_USER_INPUT", "No value provided"),
            ({"key": "k"}, "BAD_USER_INPUT", "No value provided"),
            ({"key": "k", "value": "x", "valueBase64": "eA=="}, "BAD_USER_INPUT",
             "Give value or valueBase64, not both"),
            ({"key": "k", "valueBase64": "%%"}, "BAD_USER_INPUT", "valueBase64: not base64"),
            ({"key": "k", "value": "x" * 16001}, "BAD_USER_INPUT", "Content of value too large"),
            ({"key": "k", "value": "é" * 8001}, "BAD_USER_INPUT", "Content of value too large"),
            ({"key": "/", "value": "x"}, "BAD_USER_INPUT", "Key not specified"),
            ({"key": "a\x00b", "value": "x"}, "BAD_USER_INPUT",
             "Invalid key: it must not contain control characters (U+0000)"),
            ({"key": "k" * 1025, "value": "x"}, "BAD_USER_INPUT",
             "Invalid key: it must be at most 1024 bytes of UTF-8")):
        _, [error] = failure(alice, SET, **variables)
        assert (error["extensions"]["code"], error["message"]) == (code, message), variables
    assert run(alice, SET, key="k", value="x" * 16000)["setKv"]["size"] == 16000
    _, [error] = failure(alice, '{ kvKeys(prefix: "a\\u0000") }')
    assert error["extensions"]["code"] == "BAD_USER_INPUT"

    # delete
    delete = "mutation ($key: String!, $prefix: Boolean) { deleteKv(key: $key, prefix: $prefix) }"
    assert run(bob, delete, key="a", prefix=True)["deleteKv"] == 0  # not bob's
    assert run(alice, delete, key="a/b")["deleteKv"] == 1
    assert run(alice, delete, key="a/b")["deleteKv"] == 0
    assert run(alice, delete, key="/a", prefix=True)["deleteKv"] == 2  # /a/c and /ab
    assert run(alice, "{ kvKeys }")["kvKeys"] == ["/bin", "/bin2", "/fresh", "/k"]
    _, [error] = failure(alice, delete, key="")
    assert (error["extensions"]["code"], error["message"]) == ("BAD_USER_INPUT", "Key not specified")
    assert run(alice, delete, key="", prefix=True)["deleteKv"] == 5  # everything, _internal_/x too
    assert run(alice, "{ kvKeys }")["kvKeys"] == []
    no_token = Client(transport=HTTPXTransport(url=f"{live.url}/graphql"))
    _, [error] = failure(no_token, "{ kvKeys }")
    assert error["extensions"]["code"] == "UNAUTHENTICATED"


def prominence(server: LiveServer, home, *args: str, user: str = "alice") -> subprocess.CompletedProcess:
    home.mkdir(exist_ok=True)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "PROMINENCE_URL": f"{server.url}/v1",
           "PROMINENCE_TOKEN": server.token(user)}
    return subprocess.run([str(PROMINENCE), "kv", *args], env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def test_the_prominence_cli(live, tmp_path):
    home = tmp_path / "home"

    def kv(*args: str, user: str = "alice") -> str:
        done = prominence(live, home, *args, user=user)
        assert done.returncode == 0, f"prominence kv {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    assert kv("set", "/a/b", "hello") == ""  # POST /kv//a/b
    assert kv("set", "a/c", "world") == ""
    value_file = tmp_path / "value.txt"
    value_file.write_text("from a file\nline 2")
    assert kv("set", "/a/file", str(value_file)) == ""  # an existing file: its contents
    assert kv("set", "/ab", "x") == ""
    assert kv("set", "/_internal_/1/h/0", "hidden") == ""
    assert kv("get", "/a/b") == "hello\n"  # GET /kv//a/b
    assert kv("get", "a/c") == "world\n"
    assert kv("get", "/a/file") == "from a file\nline 2\n"
    assert kv("list").splitlines() == ["/a/b", "/a/c", "/a/file", "/ab"]
    assert kv("list", "/a/").splitlines() == ["/a/b", "/a/c", "/a/file"]
    assert kv("list", "a").splitlines() == ["/a/b", "/a/c", "/a/file", "/ab"]
    assert kv("list", user="bob") == ""

    missing = prominence(live, home, "get", "/nosuch")
    assert (missing.returncode, missing.stdout.strip()) == (1, "Error: No such key")
    other = prominence(live, home, "get", "/a/b", user="bob")
    assert (other.returncode, other.stdout.strip()) == (1, "Error: No such key")
    big = tmp_path / "big.txt"
    big.write_text("x" * 16001)
    too_large = prominence(live, home, "set", "/big", str(big))
    assert (too_large.returncode, too_large.stdout.strip()) == (1, "Error: Content of value too large")

    assert kv("delete", "/a/b") == ""  # DELETE /kv/a/b
    assert kv("list").splitlines() == ["/a/c", "/a/file", "/ab"]
    assert kv("delete", "--prefix", "/a/") == ""  # DELETE /kv/a/?prefix=True
    assert kv("list").splitlines() == ["/ab"]
    assert kv("get", "/_internal_/1/h/0") == "hidden\n"
    assert kv("delete", "--prefix", "/") == ""  # everything
    assert kv("list") == ""


# --- a real job ------------------------------------------------------------------------------------

# Plain HTTP with busybox nc (its static wget crashes in this image, tests/test_hostile_jobs.py):
# `http METHOD PATH [BODY]` against PROMINENCE_URL with PROMINENCE_TOKEN; the answer's body only.
HTTP = ('hp=${PROMINENCE_URL#http://}; hp=${hp%%/*}; host=${hp%:*}; port=${hp#*:}; '
        'http() { { printf "%s %s HTTP/1.0\\r\\nAuthorization: Bearer %s\\r\\nContent-Length: ${#3}\\r\\n\\r\\n%s" '
        '"$1" "$2" "$PROMINENCE_TOKEN" "$3"; sleep 1; } '
        '| nc -w 5 "$host" "$port" | tr -d "\\r" | sed "1,/^$/d"; echo; }')


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_job_sets_and_reads_a_key_with_its_token(tmp_path):
    image = busybox_image()
    live = LiveServer(tmp_path / "data", f"sqlite:///{tmp_path / 'state.db'}", provisioner=True,
                      extra_args=("--local-cpus", "2", "--local-memory-mb", "4096"))
    with live, httpx.Client(base_url=live.url + "/v1", timeout=30,
                            headers={"Authorization": f"Bearer {live.token('alice')}"}) as alice:
        script = (f"{HTTP}; "
                  'http POST /v1/kv//jobs/$PROMINENCE_JOB_ID "hello from $PROMINENCE_JOB_ID"; '
                  "http GET /v1/kv/jobs/$PROMINENCE_JOB_ID; "
                  'http GET "/v1/kv/jobs?list=true"')
        job_id = submit(alice, job(image, {"cmd": "sh", "args": ["-c", script]}))
        done = wait_for(alice, job_id, timeout=240)
        assert done["status"] == "completed", done
        output = alice.get(f"/jobs/{job_id}/stdout").text.splitlines()
        assert output == ["{}", f"hello from {job_id}", f'["/jobs/{job_id}"]'], output
        # the job acted as alice: the key is in her store, not in anyone else's
        assert alice.get(f"/kv/jobs/{job_id}").text == f"hello from {job_id}"
        bob = {"Authorization": f"Bearer {live.token('bob')}"}
        assert alice.get(f"/kv/jobs/{job_id}", headers=bob).status_code == 404
    driver = LocalNodeDriver(str(live.data_dir / "nodes"))  # the server destroys its nodes; the safety net
    for node in driver.list_nodes():
        driver.destroy_node(node)
