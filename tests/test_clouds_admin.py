"""Admins manage clouds: `prominence-server cloud add|list|show|update|remove|set-credentials|
enable|disable|apply` and `node list` on a temporary data dir, and the CloudService behind them on
SQLite and PostgreSQL (DESIGN.md 3.2, 3.4).

Credentials are write-only: they go in from stdin or a file and never come back out of any
command, error message or the database in plain text.
"""
import io
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet
from sqlalchemy import insert, select, update

from gateway.cli import main
from gateway.services.clouds import LOCAL, CloudService
from provisioner.drivers.local import machine_cpus, machine_memory_mb
from schema.credentials import CredentialBox, CredentialError
from schema.db import make_engine, upgrade
from schema.errors import Conflict, InvalidInput, NotFound
from schema.tables import clouds, nodes
from tests.conftest import REPO

ENTRY = Path(sys.executable).with_name("prominence-server")
FLAVOURS = "flavours=[{name: m1.small, cpus: 2, memory_mb: 4096, disk_gb: 20, price: 0.05}]"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
ACCESS = "AKIAIOSFODNN7EXAMPLE"


def cloud_doc(name: str, **fields) -> dict:
    return {"name": name, "provider": "ec2", "region": "eu-west-1",
            "flavours": [{"name": "m1", "cpus": 2, "memory_mb": 4096, "disk_gb": 20, "price": 0.05}], **fields}


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMINENCE_")}
    return {**env, **extra}


class Admin:
    """`prominence-server` on one data dir: in this process (fast) or as the real command."""

    def __init__(self, data_dir: Path, capsys, monkeypatch):
        self.data_dir = data_dir
        self._capsys = capsys
        self._monkeypatch = monkeypatch
        self.url = f"sqlite:///{data_dir / 'prominence.db'}"
        self._engine = None

    def __call__(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        """main([...]): (exit status, stdout, stderr), the message of sys.exit on stderr as the
        interpreter prints it."""
        self._monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        self._capsys.readouterr()
        code = 0
        try:
            main([*args, "--data-dir", str(self.data_dir)])
        except SystemExit as exit_:
            code = exit_.code
        out, err = self._capsys.readouterr()
        if isinstance(code, str):
            err, code = err + code + "\n", 1
        return code or 0, out, err

    def ok(self, *args: str, stdin: str = "") -> str:
        code, out, err = self(*args, stdin=stdin)
        assert code == 0 and err == "", (code, out, err)
        return out

    def json(self, *args: str) -> object:
        return json.loads(self.ok(*args))

    def run(self, *args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
        """The real command, in its own process."""
        return subprocess.run([str(ENTRY), *args, "--data-dir", str(self.data_dir)], input=stdin, text=True,
                              capture_output=True, env=env or clean_env(), cwd=REPO, timeout=60, check=False)

    @property
    def engine(self):
        if self._engine is None:
            self._engine = make_engine(self.url)
        return self._engine

    def rows(self) -> list[dict]:
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(select(clouds).order_by(clouds.c.name))]

    def sealed(self, name: str) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(select(clouds.c.credentials).where(clouds.c.name == name)).scalar_one()

    def database_bytes(self) -> bytes:
        """The SQLite database with its write-ahead log: everything SQLite wrote."""
        return b"".join(p.read_bytes() for p in sorted(self.data_dir.glob("prominence.db*")))

    def add_node(self, cloud: str, state: str = "ready", **values) -> int:
        return insert_node(self.engine, cloud, state, **values)


def insert_node(engine, cloud: str, state: str = "ready", **values) -> int:
    now = time.time()
    row = {"cloud": cloud, "name": f"prominence-test-{cloud}-{time.monotonic_ns()}", "state": state, "cpus": 2,
           "memory_mb": 4096, "disk_gb": 20, "site": "", "info": {}, "created_at": now - 3600,
           "last_heartbeat": now, "flavour": "m1", "price": 0.05, "address": "10.0.0.7", **values}
    with engine.begin() as connection:
        return connection.execute(insert(nodes).values(**row)).inserted_primary_key[0]


@pytest.fixture
def admin(tmp_path, capsys, monkeypatch):
    for name in [k for k in os.environ if k.startswith("PROMINENCE_")]:
        monkeypatch.delenv(name)
    admin = Admin(tmp_path / "data", capsys, monkeypatch)
    yield admin
    if admin._engine is not None:
        admin._engine.dispose()


def add_aws(admin: Admin) -> None:
    admin.ok("cloud", "add", "aws", "--provider", "ec2", "--set", FLAVOURS, "--set", "region=eu-west-1")


def assert_no_secret(*texts) -> None:
    for text in texts:
        if isinstance(text, bytes):
            assert SECRET.encode() not in text and ACCESS.encode() not in text
        else:
            assert SECRET not in text and ACCESS not in text, text


# -- add, list, show, update, enable, disable, remove ---------------------------------------------

def test_add_from_flags_then_show_and_list(admin):
    shown = admin.json("cloud", "add", "aws", "--provider", "ec2", "--set", FLAVOURS, "--set", "region=eu-west-1",
                       "--set", "max_cpus=64", "--set", "idle-timeout=120", "--set", "driver_args={ex_foo: 1}",
                       "--set", "enabled=false")
    assert shown["name"] == "aws" and shown["provider"] == "ec2" and shown["region"] == "eu-west-1"
    # --set values are YAML: numbers, mappings, booleans and lists arrive typed.
    assert shown["max_cpus"] == 64 and shown["idle_timeout"] == 120 and shown["driver_args"] == {"ex_foo": 1}
    assert shown["enabled"] is False
    assert shown["flavours"] == [{"name": "m1.small", "cpus": 2, "memory_mb": 4096, "disk_gb": 20, "price": 0.05}]
    assert shown["has_credentials"] is False and shown["health"] == 1.0 and shown["penalty_until"] is None
    assert shown["instances"] == 0 and shown["spend"] == 0
    assert admin.json("cloud", "show", "aws") == shown

    listed = admin.json("cloud", "list", "--json")
    assert [c["name"] for c in listed] == ["aws"] and listed[0] == shown
    table = admin.ok("cloud", "list").splitlines()
    assert table[0].split()[:4] == ["NAME", "PROVIDER", "ENABLED", "HEALTH"]
    assert table[1].split()[:5] == ["aws", "ec2", "no", "1.00", "-"]


def test_add_from_a_file_with_flags_taking_precedence(admin, tmp_path):
    path = tmp_path / "openstack.yaml"
    path.write_text(yaml.safe_dump({
        "name": "from-file", "provider": "openstack", "site": "uni-a", "region": "regionOne", "image": "ubuntu-24.04",
        "driver_args": {"ex_force_auth_url": "https://keystone.example:5000", "ex_tenant_name": "demo"},
        "create_options": {"networks": [{"id": "net-1"}]}, "ssh_user": "ubuntu",
        "flavours": [{"name": "m1.medium", "cpus": 2, "memory_mb": 4096, "disk_gb": 40, "price": 0},
                     {"name": "m1.large", "cpus": 4, "memory_mb": 8192, "disk_gb": 80, "price": 0}],
        "max_instances": 10, "min_nodes": 1}))
    shown = admin.json("cloud", "add", "uni", "--file", str(path), "--set", "max_instances=5")
    assert shown["name"] == "uni" and shown["provider"] == "openstack" and shown["site"] == "uni-a"
    assert shown["max_instances"] == 5 and shown["min_nodes"] == 1 and shown["ssh_user"] == "ubuntu"
    assert [f["name"] for f in shown["flavours"]] == ["m1.medium", "m1.large"]
    assert shown["create_options"] == {"networks": [{"id": "net-1"}]}
    assert [r["name"] for r in admin.rows()] == ["uni"]
    # A JSON file is YAML too.
    path.write_text(json.dumps(cloud_doc("as-json")))
    assert admin.json("cloud", "add", "--file", str(path))["name"] == "as-json"


def test_update_enable_and_disable(admin):
    add_aws(admin)
    before = admin.rows()[0]
    changed = admin.json("cloud", "update", "aws", "--set", "max_booting=2", "--set", "site=aws-eu",
                         "--set", "flavours=[{name: c5, cpus: 4, memory_mb: 8192, disk_gb: 50, price: 0.2}]")
    assert changed["max_booting"] == 2 and changed["site"] == "aws-eu" and changed["region"] == "eu-west-1"
    assert [f["name"] for f in changed["flavours"]] == ["c5"]
    after = admin.rows()[0]
    assert after["updated_at"] >= before["updated_at"] and after["created_at"] == before["created_at"]

    assert admin.ok("cloud", "disable", "aws") == "disabled aws\n"
    assert admin.json("cloud", "show", "aws")["enabled"] is False
    assert admin.ok("cloud", "list").splitlines()[1].split()[2] == "no"
    assert admin.ok("cloud", "enable", "aws") == "enabled aws\n"
    assert admin.json("cloud", "show", "aws")["enabled"] is True
    assert admin.rows()[0]["max_booting"] == 2  # enabling changes nothing else


def test_remove_is_refused_while_the_cloud_has_live_nodes(admin):
    add_aws(admin)
    node_id = admin.add_node("aws", "configuring")
    code, out, err = admin("cloud", "remove", "aws")
    assert code != 0 and out == ""
    assert err == "prominence-server: Cloud aws still has 1 node not yet destroyed: disable it, and remove it once they are gone\n"
    assert [r["name"] for r in admin.rows()] == ["aws"]
    # Once its nodes are gone it can go.
    with admin.engine.begin() as connection:
        connection.execute(update(nodes).where(nodes.c.id == node_id).values(state="deleted", ended_at=time.time()))
    assert admin.ok("cloud", "remove", "aws") == "removed aws\n"
    assert admin.rows() == [] and admin.json("cloud", "list", "--json") == []
    assert admin("cloud", "show", "aws")[2] == "prominence-server: No such cloud: aws\n"


def test_apply_adds_then_updates_several_clouds(admin, tmp_path):
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump([cloud_doc("one"), cloud_doc("two", site="s2", max_instances=3)]))
    assert admin.ok("cloud", "apply", str(path)) == "added one\nadded two\n"
    assert [(r["name"], r["site"], r["max_instances"]) for r in admin.rows()] == [("one", "", None), ("two", "s2", 3)]

    # A second apply updates to match (fields not given go back to their defaults) and adds new ones;
    # a mapping with `clouds:` works as well as a list.
    path.write_text(yaml.safe_dump({"clouds": [cloud_doc("two", site="s2b"), cloud_doc("one", region="us-east-1"),
                                               cloud_doc("three")]}))
    assert admin.ok("cloud", "apply", str(path)) == "updated two\nupdated one\nadded three\n"
    assert [(r["name"], r["region"], r["site"], r["max_instances"]) for r in admin.rows()] == [
        ("one", "us-east-1", "", None), ("three", "eu-west-1", "", None), ("two", "eu-west-1", "s2b", None)]
    # One mapping alone is one cloud.
    path.write_text(yaml.safe_dump(cloud_doc("four")))
    assert admin.ok("cloud", "apply", str(path)) == "added four\n"


@pytest.mark.parametrize("documents, message", [
    ([cloud_doc("new-one"), cloud_doc("aws", max_booting=0)],
     "clouds[1]: Invalid cloud: max_booting: input should be greater than or equal to 1"),
    ([cloud_doc("new-one"), {**cloud_doc("new-two"), "colour": "red"}],
     'clouds[1]: Invalid cloud: "colour" is not an allowed field'),
    ([cloud_doc("new-one"), cloud_doc("new-one")], "Invalid cloud file: a cloud name appears twice"),
    ([cloud_doc("new-one"), "aws"], "Invalid cloud file: expected a list of clouds (mappings)"),
    ([cloud_doc("new-one"), {**cloud_doc("aws"), "credentials": {"key": 5}}],
     "Invalid credentials: credentials.key must be a string without NUL characters"),
])
def test_apply_is_all_or_nothing(admin, tmp_path, documents, message):
    add_aws(admin)
    before = admin.rows()
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump(documents))
    code, out, err = admin("cloud", "apply", str(path))
    assert (code, out, err) == (1, "", f"prominence-server: {message}\n")
    assert admin.rows() == before


def test_node_list(admin):
    add_aws(admin)
    admin.ok("cloud", "add", "other", "--provider", "ssh", "--set", FLAVOURS)
    ready = admin.add_node("aws", "ready", cpus=4, price=0.25, address="10.1.2.3")
    booting = admin.add_node("other", "creating", last_heartbeat=None, address="")
    gone = admin.add_node("aws", "deleted", ended_at=time.time())
    listed = admin.json("node", "list", "--json")
    assert [n["id"] for n in listed] == [ready, booting]
    assert {k: listed[0][k] for k in ("cloud", "state", "cpus", "price", "address", "flavour")} == {
        "cloud": "aws", "state": "ready", "cpus": 4, "price": 0.25, "address": "10.1.2.3", "flavour": "m1"}
    assert [n["id"] for n in admin.json("node", "list", "--json", "--cloud", "aws")] == [ready]
    assert [n["id"] for n in admin.json("node", "list", "--json", "--all")] == [ready, booting, gone]
    table = admin.ok("node", "list").splitlines()
    assert table[0].split()[:5] == ["ID", "NAME", "CLOUD", "FLAVOUR", "STATE"]
    assert [line.split()[0] for line in table[1:]] == [str(ready), str(booting)]
    assert "10.1.2.3" in table[1] and "ready" in table[1] and "creating" in table[2]
    # The clouds' views count their live nodes.
    aws = admin.json("cloud", "show", "aws")
    assert (aws["instances"], aws["booting"], aws["cpus_used"]) == (1, 0, 4) and aws["spend"] > 0.2
    other = admin.json("cloud", "show", "other")
    assert (other["instances"], other["booting"]) == (1, 1)


# -- bad input: one line naming the field and the rule, nothing stored ----------------------------

BAD_INPUT = [
    (["cloud", "add", "new", "--provider", "ec2", "--set", FLAVOURS, "--set", "colour=red"],
     'Invalid cloud: "colour" is not an allowed field'),
    (["cloud", "add", "Bad_Name", "--provider", "ec2", "--set", FLAVOURS],
     "Invalid cloud: name: string should match pattern '^[a-z0-9][a-z0-9-]{0,39}$'"),
    (["cloud", "add", "new", "--provider", "ec2"], "Invalid cloud: flavours: is required"),
    (["cloud", "add", "new", "--provider", "ec2", "--set", "flavours=[]"],
     "Invalid cloud: flavours: list should have at least 1 item after validation, not 0"),
    (["cloud", "add", "new", "--provider", "ec2", "--set",
      "flavours=[{name: a, cpus: 1, memory_mb: 1, disk_gb: 1}, {name: a, cpus: 2, memory_mb: 2, disk_gb: 2}]"],
     "Invalid cloud: flavours must have distinct names"),
    (["cloud", "add", "new", "--provider", "ec2", "--set",
      "flavours=[{name: a, cpus: 1, memory_mb: 1, disk_gb: 1, price: -0.5}]"],
     "Invalid cloud: flavours[0].price: input should be greater than or equal to 0"),
    (["cloud", "add", "new", "--provider", "ec2", "--set", FLAVOURS,
      "--set", f"driver_args={{key: {ACCESS}, secret: {SECRET}, region: x}}"],
     "Invalid cloud: driver_args: must not hold key, secret: set secrets with `cloud set-credentials`"),
    (["cloud", "add", "new", "--provider", "ec2", "--set", FLAVOURS, "--set", f"create_options={{password: {SECRET}}}"],
     "Invalid cloud: create_options: must not hold password: set secrets with `cloud set-credentials`"),
    (["cloud", "add", "new", "--provider", "ec2", "--set", "flavours=[{name: a, cpus: 1"],
     "--set flavours is not valid YAML (line 1)"),
    (["cloud", "add", "new", "--provider", "ec2", "--set", "flavours"], "--set 'flavours': expected FIELD=VALUE"),
    (["cloud", "add", "new", "--provider", "bad provider!", "--set", FLAVOURS],
     "Invalid cloud: provider: string should match pattern '^[A-Za-z0-9_-]{1,40}$'"),
    (["cloud", "add", "aws", "--provider", "openstack", "--set", FLAVOURS], "Cloud aws already exists"),
    (["cloud", "add", "--file", "/nonexistent/cloud.yaml"],
     "cannot read /nonexistent/cloud.yaml: No such file or directory"),
    (["cloud", "show", "nope"], "No such cloud: nope"),
    (["cloud", "update", "nope", "--set", "site=x"], "No such cloud: nope"),
    (["cloud", "remove", "nope"], "No such cloud: nope"),
    (["cloud", "enable", "nope"], "No such cloud: nope"),
    (["cloud", "update", "aws", "--set", "colour=red"], 'Invalid cloud: "colour" is not a field that can be changed'),
    (["cloud", "update", "aws", "--set", "name=renamed"], 'Invalid cloud: "name" is not a field that can be changed'),
    (["cloud", "update", "aws", "--set", "max_booting=0"],
     "Invalid cloud: max_booting: input should be greater than or equal to 1"),
    (["cloud", "update", "aws", "--set", "idle_timeout=-5"],
     "Invalid cloud: idle_timeout: input should be greater than 0"),
    (["cloud", "update", "aws", "--set", "node_root=relative/dir"],
     "Invalid cloud: node_root: must be an absolute path without .."),
    (["cloud", "update", "aws", "--set", "driver_args={token: abc}"],
     "Invalid cloud: driver_args: must not hold token: set secrets with `cloud set-credentials`"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[" ".join(a[1:3]) + f" #{i}" for i, (a, _) in
                                                          enumerate(BAD_INPUT)])
def test_bad_input_is_one_line_naming_the_field_and_changes_nothing(admin, argv, message):
    add_aws(admin)
    before = admin.rows()
    code, out, err = admin(*argv)
    assert code != 0 and out == ""
    assert err == f"prominence-server: {message}\n"
    assert_no_secret(err)
    assert admin.rows() == before


def test_bad_input_from_the_real_command(admin, tmp_path):
    add_aws(admin)
    before = admin.rows()
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("name: x\nflavours: [\n")
    for argv, message in [
        (["cloud", "add", "--file", str(bad_file)], "the cloud file is not valid YAML (line 3)"),
        (["cloud", "add", "new", "--provider", "ec2", "--set", FLAVOURS, "--set", "colour=red"],
         'Invalid cloud: "colour" is not an allowed field'),
        (["cloud", "add", "aws", "--provider", "ec2", "--set", FLAVOURS], "Cloud aws already exists"),
    ]:
        done = admin.run(*argv)
        assert done.returncode != 0 and done.stdout == ""
        assert done.stderr == f"prominence-server: {message}\n", done.stderr
    assert admin.rows() == before


# -- credentials: write-only ----------------------------------------------------------------------

def every_view(admin: Admin, env: dict | None = None) -> str:
    """What `cloud show` (the real command), `cloud list` and `node list` print."""
    done = admin.run("cloud", "show", "aws", env=env)
    assert done.returncode == 0, done.stderr
    outputs = [done.stdout, done.stderr]
    for argv in (["cloud", "list", "--json"], ["cloud", "list"], ["node", "list"], ["node", "list", "--json", "--all"]):
        code, out, err = admin(*argv)
        assert code == 0, err
        outputs += [out, err]
    return "\n".join(outputs)


def test_credentials_are_set_from_stdin_or_a_file_and_never_shown_or_stored_in_plain_text(admin, tmp_path):
    add_aws(admin)
    admin.add_node("aws")
    done = admin.run("cloud", "set-credentials", "aws", stdin=f"key: {ACCESS}\nsecret: {SECRET}\n")
    assert (done.returncode, done.stdout, done.stderr) == (0, "credentials of aws set\n", "")
    views = every_view(admin)
    assert_no_secret(views)
    assert admin.json("cloud", "show", "aws")["has_credentials"] is True

    first = admin.sealed("aws")
    assert first and first.startswith("gAAAA")  # a Fernet token
    assert_no_secret(first, admin.database_bytes())
    # Only the server's key opens them.
    box = CredentialBox.for_data_dir(admin.data_dir)
    assert box.open(first) == {"key": ACCESS, "secret": SECRET}

    # Rotation, from a file this time.
    path = tmp_path / "creds.yaml"
    path.write_text(f"key: {ACCESS}\nsecret: {SECRET}-2\n")
    done = admin.run("cloud", "set-credentials", "aws", "--file", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (0, "credentials of aws set\n", "")
    second = admin.sealed("aws")
    assert second != first and box.open(second) == {"key": ACCESS, "secret": f"{SECRET}-2"}
    assert admin.json("cloud", "show", "aws")["has_credentials"] is True
    assert_no_secret(every_view(admin), second, admin.database_bytes())


def test_credential_errors_never_quote_the_secret(admin, tmp_path):
    add_aws(admin)
    path = tmp_path / "creds.yaml"
    cases = [
        (f"key: {ACCESS}\nsecret: [{SECRET}\n", "the credentials file is not valid YAML (line 3)"),
        (f"key: {ACCESS}\nsecret: {{{SECRET}: 1}}\n",
         "Invalid credentials: credentials.secret must be a string without NUL characters"),
        (f"{SECRET}: {ACCESS}\n", "Invalid credentials: credentials: names must be letters, digits and _"),
        (f"- {SECRET}\n", "Invalid credentials: credentials must be a non-empty mapping of names to strings"),
        (SECRET, "Invalid credentials: credentials must be a non-empty mapping of names to strings"),
    ]
    for index, (text, message) in enumerate(cases):
        if index < 2:  # the real command
            done = admin.run("cloud", "set-credentials", "aws", stdin=text)
            code, out, err = done.returncode, done.stdout, done.stderr
        else:
            code, out, err = admin("cloud", "set-credentials", "aws", stdin=text)
        assert (code, out, err) == (1, "", f"prominence-server: {message}\n")
    path.write_text(f"key: {ACCESS}\nsecret: {SECRET}\n")
    code, out, err = admin("cloud", "set-credentials", "nope", "--file", str(path))
    assert (code, out, err) == (1, "", "prominence-server: No such cloud: nope\n")
    # Credentials are no field of a cloud: the value is not echoed back either.
    code, out, err = admin("cloud", "add", "new", "--provider", "ec2", "--set", FLAVOURS,
                           "--set", f"credentials={{secret: {SECRET}}}")
    assert err == 'prominence-server: Invalid cloud: "credentials" is not an allowed field\n'
    assert admin.sealed("aws") is None and [r["name"] for r in admin.rows()] == ["aws"]


def test_a_document_of_cloud_apply_may_set_credentials(admin, tmp_path):
    path = tmp_path / "clouds.yaml"
    path.write_text(yaml.safe_dump([{**cloud_doc("aws"), "credentials": {"key": ACCESS, "secret": SECRET}},
                                    cloud_doc("plain")]))
    done = admin.run("cloud", "apply", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (0, "added aws\nadded plain\n", "")
    first = admin.sealed("aws")
    assert CredentialBox.for_data_dir(admin.data_dir).open(first) == {"key": ACCESS, "secret": SECRET}
    assert admin.sealed("plain") is None
    # Applying again without credentials keeps them.
    path.write_text(yaml.safe_dump([cloud_doc("aws", site="s")]))
    assert admin.ok("cloud", "apply", str(path)) == "updated aws\n"
    assert admin.sealed("aws") == first
    assert_no_secret(every_view(admin), admin.database_bytes())


def test_another_key_cannot_decrypt_the_credentials(admin, monkeypatch):
    key, other = Fernet.generate_key(), Fernet.generate_key()
    env = clean_env(PROMINENCE_CREDENTIALS_KEY=key.decode())
    monkeypatch.setenv("PROMINENCE_CREDENTIALS_KEY", key.decode())
    add_aws(admin)
    done = admin.run("cloud", "set-credentials", "aws", stdin=f"secret: {SECRET}\n", env=env)
    assert done.returncode == 0, done.stderr
    # With the key in the environment, no key file is made.
    assert not (admin.data_dir / "credentials.key").exists()
    sealed = admin.sealed("aws")
    assert CredentialBox(key).open(sealed) == {"secret": SECRET}
    with pytest.raises(CredentialError) as error:
        CredentialBox(other).open(sealed)
    assert "cannot be decrypted" in str(error.value)
    assert_no_secret(str(error.value), repr(error.value), sealed)
    # The views never decrypt: they work under any key and still show nothing.
    monkeypatch.setenv("PROMINENCE_CREDENTIALS_KEY", other.decode())
    views = every_view(admin, clean_env(PROMINENCE_CREDENTIALS_KEY=other.decode()))
    assert_no_secret(views)


def test_the_key_file_is_made_with_mode_0600(admin):
    done = admin.run("cloud", "list")
    assert done.returncode == 0, done.stderr
    path = admin.data_dir / "credentials.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_bytes().strip()
    Fernet(key)  # a valid Fernet key
    # Made once: later commands use the same key.
    admin.ok("cloud", "list")
    assert path.read_bytes().strip() == key


# -- CloudService on SQLite and PostgreSQL --------------------------------------------------------

@pytest.fixture
def service(database_url):
    engine = make_engine(database_url)
    upgrade(engine)
    box = CredentialBox(Fernet.generate_key())
    yield CloudService(engine, box), engine, box
    engine.dispose()


def sealed_of(engine, name: str) -> str | None:
    with engine.connect() as connection:
        return connection.execute(select(clouds.c.credentials).where(clouds.c.name == name)).scalar_one()


def test_service_adds_updates_and_removes(service):
    clouds_, engine, _ = service
    view = clouds_.add(cloud_doc("aws", max_instances=4), {"key": ACCESS, "secret": SECRET})
    assert view.has_credentials and view.spec.max_instances == 4 and view.instances == 0
    assert "credentials" not in view.to_dict() and SECRET not in json.dumps(view.to_dict())
    with pytest.raises(Conflict, match="Cloud aws already exists"):
        clouds_.add(cloud_doc("aws"))
    with pytest.raises(InvalidInput, match=r"^Invalid cloud: flavours\[0\].cpus: input should be greater"):
        clouds_.add(cloud_doc("bad", flavours=[{"name": "x", "cpus": 0, "memory_mb": 1, "disk_gb": 1}]))

    assert clouds_.update("aws", {"region": "us-east-1"}).spec.region == "us-east-1"
    assert clouds_.get("aws").spec.max_instances == 4
    with pytest.raises(InvalidInput):
        clouds_.update("aws", {"max_instances": -1})
    assert clouds_.get("aws").spec.max_instances == 4
    assert clouds_.set_enabled("aws", False).spec.enabled is False
    with pytest.raises(NotFound, match="No such cloud: nope"):
        clouds_.update("nope", {"region": "x"})

    node_id = insert_node(engine, "aws", "ready", cpus=4, memory_mb=8192)
    insert_node(engine, "aws", "creating", cpus=2, memory_mb=4096)
    view = clouds_.get("aws")
    assert (view.instances, view.booting, view.cpus, view.memory_mb) == (2, 1, 6, 12288)
    assert clouds_.nodes("aws")[0].id == node_id
    with pytest.raises(Conflict, match="still has 2 nodes not yet destroyed"):
        clouds_.remove("aws")
    with engine.begin() as connection:
        connection.execute(update(nodes).values(state="lost", ended_at=time.time()))
    clouds_.remove("aws")
    assert clouds_.list() == []
    assert [n.state for n in clouds_.nodes(include_gone=True)] == ["lost", "lost"]


def test_service_credentials_are_sealed_and_rotated(service):
    clouds_, engine, box = service
    clouds_.add(cloud_doc("aws"))
    assert sealed_of(engine, "aws") is None and not clouds_.get("aws").has_credentials
    clouds_.set_credentials("aws", {"key": ACCESS, "secret": SECRET})
    first = sealed_of(engine, "aws")
    assert_no_secret(first)
    clouds_.set_credentials("aws", {"key": ACCESS, "secret": SECRET})  # same values, new ciphertext
    second = sealed_of(engine, "aws")
    assert second != first and box.open(second) == {"key": ACCESS, "secret": SECRET}
    assert clouds_.get("aws").has_credentials
    with pytest.raises(InvalidInput) as error:
        clouds_.set_credentials("aws", {"secret": 12345})
    assert "12345" not in error.value.message
    assert sealed_of(engine, "aws") == second
    with pytest.raises(CredentialError):
        CredentialBox(Fernet.generate_key()).open(second)


def test_service_apply_checks_everything_before_storing_anything(service):
    clouds_, engine, box = service
    assert clouds_.apply([cloud_doc("a"), {**cloud_doc("b"), "credentials": {"token": SECRET}}]) == ["added a",
                                                                                                     "added b"]
    assert box.open(sealed_of(engine, "b")) == {"token": SECRET}
    with pytest.raises(InvalidInput, match=r"^clouds\[2\]: Invalid cloud: name:"):
        clouds_.apply([cloud_doc("a", site="changed"), cloud_doc("c"), cloud_doc("Not OK")])
    assert [v.spec.name for v in clouds_.list()] == ["a", "b"] and clouds_.get("a").spec.site == ""
    assert clouds_.apply([cloud_doc("a", site="changed"), cloud_doc("c")]) == ["updated a", "added c"]
    assert clouds_.get("a").spec.site == "changed" and clouds_.get("b").has_credentials


def test_ensure_local_creates_the_local_cloud_once_then_follows_explicit_settings(service, tmp_path):
    clouds_, engine, _ = service
    base = tmp_path / "nodes"
    clouds_.ensure_local(base, None, None, None)
    local = clouds_.get(LOCAL)
    cpus, memory = machine_cpus(), machine_memory_mb()
    assert local.spec.provider == "local" and local.spec.connection == "local" and local.spec.enabled
    assert local.spec.max_cpus == cpus and local.spec.max_memory_mb == memory
    assert [f.cpus for f in local.spec.flavours] == list(range(1, cpus + 1))
    assert local.spec.flavours[-1].memory_mb == memory and all(f.price == 0 for f in local.spec.flavours)
    assert local.spec.idle_timeout == 600 and local.spec.driver_args == {"base_dir": str(base)}
    assert base.is_dir()
    with engine.connect() as connection:
        stamp = connection.execute(select(clouds.c.updated_at).where(clouds.c.name == LOCAL)).scalar_one()

    # Started again without options: nothing changes (an admin's changes stay).
    clouds_.update(LOCAL, {"max_booting": 2})
    clouds_.ensure_local(base, None, None, None)
    assert [v.spec.name for v in clouds_.list()] == [LOCAL]
    assert clouds_.get(LOCAL).spec.max_booting == 2 and clouds_.get(LOCAL).spec.max_cpus == cpus

    # Explicit sizes and idle timeout update it.
    clouds_.ensure_local(base, 1, 2048, 42.0)
    local = clouds_.get(LOCAL)
    assert local.spec.max_cpus == 1 and local.spec.max_memory_mb == 2048 and local.spec.idle_timeout == 42
    assert [(f.name, f.cpus, f.memory_mb) for f in local.spec.flavours] == [("local-1cpu", 1, 2048)]
    assert local.spec.max_booting == 2
    with engine.connect() as connection:
        assert connection.execute(select(clouds.c.updated_at).where(clouds.c.name == LOCAL)).scalar_one() >= stamp
    # An idle timeout alone leaves the size as it is.
    clouds_.ensure_local(base, None, None, 300.0)
    local = clouds_.get(LOCAL)
    assert local.spec.idle_timeout == 300 and local.spec.max_cpus == 1
