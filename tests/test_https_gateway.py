"""The service over HTTPS (`serve --tls-cert --tls-key`), and agents that trust only the CA they are
given: a gateway whose certificate does not verify is refused at once (exit 1, one log line), never
retried like a gateway that is down. The playbook puts the CA bundle on the node."""
import datetime
import ipaddress
import json
import socket
import ssl
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import insert, select

from gateway.settings import Settings
from provisioner.configure import configure_node
from provisioner.drivers import register
from schema.db import make_engine
from schema.identity import TokenAuthority
from schema.tables import nodes
from tests.conftest import REPO
from tests.live import LiveServer
from tests.test_agent_exit import errors, start_agent

pytestmark = pytest.mark.timeout(90)


# --- certificates ------------------------------------------------------------------------------

def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, *items) -> Path:
    path.write_bytes(b"".join(
        item.public_bytes(serialization.Encoding.PEM) if isinstance(item, x509.Certificate) else
        item.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption()) for item in items))
    return path


def make_ca(directory: Path, name: str):
    """A self-signed CA, RFC 5280-clean (Python >= 3.13 verifies strictly); its PEM in directory/name.pem."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key, _write(directory / f"{name}.pem", cert)


def make_server_cert(directory: Path, ca_cert, ca_key) -> tuple[Path, Path]:
    """A certificate for the IP address 127.0.0.1 (only), signed by the CA: (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("prominence gateway")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _write(directory / "server.pem", cert), _write(directory / "server.key", key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key, ca = make_ca(directory, "gateway-ca")
    cert, key = make_server_cert(directory, ca_cert, ca_key)
    _, _, other_ca = make_ca(directory, "unrelated-ca")
    return {"ca": ca, "cert": cert, "key": key, "other_ca": other_ca}


class HttpsServer(LiveServer):
    """LiveServer over HTTPS: healthy once /v1/health answers with a certificate the CA verifies."""

    def __init__(self, data_dir: Path, database_url: str, pki: dict[str, Path]):
        super().__init__(data_dir, database_url, extra_args=("--tls-cert", str(pki["cert"]),
                                                             "--tls-key", str(pki["key"])))
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = str(pki["ca"])
        self.verify = verify(self.ca)


@pytest.fixture(scope="module")
def server(tmp_path_factory, pki):
    directory = tmp_path_factory.mktemp("https-server")
    with HttpsServer(directory / "data", f"sqlite:///{directory / 'state.db'}", pki) as live:
        yield live


def verify(path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(path))


def add_node(server: LiveServer) -> tuple[int, str]:
    """A node being configured (as the provisioner records it), and its agent's token."""
    engine = make_engine(server.database_url)
    with engine.begin() as connection:
        node_id = connection.execute(insert(nodes).values(
            cloud="local", name=f"https-{uuid.uuid4().hex[:8]}", state="configuring", cpus=1, memory_mb=512,
            disk_gb=1, site="local", region="", info={}, created_at=time.time()).returning(nodes.c.id)).scalar_one()
    engine.dispose()
    return node_id, TokenAuthority(Settings.load(str(server.data_dir)).secret).issue_node_token(node_id)


def node_state(server: LiveServer, node_id: int) -> str:
    engine = make_engine(server.database_url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(nodes.c.state).where(nodes.c.id == node_id)).scalar_one()
    finally:
        engine.dispose()


def wait_ready(server: LiveServer, node_id: int, agent: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while node_state(server, node_id) != "ready":
        assert agent.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


# --- settings and the server command -----------------------------------------------------------

def test_tls_settings_and_their_defaults(tmp_path, pki, monkeypatch):
    for name in ("PROMINENCE_TLS_CERT", "PROMINENCE_TLS_KEY", "PROMINENCE_AGENT_CA", "PROMINENCE_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    plain = Settings.load(str(tmp_path), port=9000)
    assert (plain.tls, plain.public_url, plain.agent_ca, plain.agent_ca_pem) == (False, "http://127.0.0.1:9000", None, None)

    tls = Settings.load(str(tmp_path), port=9000, tls_cert=str(pki["cert"]), tls_key=str(pki["key"]))
    assert tls.tls and tls.public_url == "https://127.0.0.1:9000"
    assert tls.agent_ca == str(pki["cert"]) and tls.agent_ca_pem == pki["cert"].read_text()

    proxied = Settings.load(str(tmp_path), public_url="https://gateway.example.org/", agent_ca=str(pki["ca"]))
    assert not proxied.tls and proxied.public_url == "https://gateway.example.org"
    assert proxied.agent_ca_pem == pki["ca"].read_text()

    # One file with the certificate and its key, as load_cert_chain allows: the key stays here.
    combined = tmp_path / "combined.pem"
    combined.write_text(pki["key"].read_text() + pki["cert"].read_text())
    both = Settings.load(str(tmp_path), tls_cert=str(combined), tls_key=str(combined))
    assert both.tls and both.agent_ca == str(combined)
    assert both.agent_ca_pem == pki["cert"].read_text() and "PRIVATE KEY" not in both.agent_ca_pem

    monkeypatch.setenv("PROMINENCE_TLS_CERT", str(pki["cert"]))
    monkeypatch.setenv("PROMINENCE_TLS_KEY", str(pki["key"]))
    monkeypatch.setenv("PROMINENCE_AGENT_CA", str(pki["ca"]))
    from_env = Settings.load(str(tmp_path))
    assert from_env.tls and from_env.agent_ca == str(pki["ca"]) and from_env.public_url.startswith("https://")


@pytest.mark.parametrize("options, message", [
    (["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "{cert}", "--tls-key", "{missing}"], "--tls-key {missing}: not a readable file"),
    (["--tls-cert", "{other_ca}", "--tls-key", "{key}"], "not a PEM certificate and its private key"),
    (["--agent-ca", "{key}"], "--agent-ca {key}: not a readable PEM CA bundle"),
])
def test_bad_tls_options_exit_with_one_line(tmp_path, pki, options, message):
    paths = {**{k: str(v) for k, v in pki.items()}, "missing": str(tmp_path / "missing.pem")}
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--port", "1", "--data-dir",
                          str(tmp_path / "data"), *(option.format(**paths) for option in options)],
                         cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and out.stdout == ""
    [line] = out.stderr.splitlines()
    assert line.startswith("prominence-server: ") and message.format(**paths) in line


# --- the gateway over HTTPS, and agents -----------------------------------------------------------

def test_the_api_answers_over_https_with_the_right_ca(server, pki):
    assert httpx.get(f"{server.url}/v1/health", verify=verify(pki["ca"])).status_code == 204
    token = server.token()
    answer = httpx.get(f"{server.url}/v1/jobs", headers={"Authorization": f"Bearer {token}"}, verify=verify(pki["ca"]))
    assert answer.status_code == 200, answer.text
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/v1/health", verify=verify(pki["other_ca"]))
    with pytest.raises(httpx.HTTPError):  # and no plain HTTP on that port
        httpx.get(f"http://127.0.0.1:{server.port}/v1/health")


@pytest.mark.parametrize("trusted", ["ca", "cert"])  # the CA, or the gateway's certificate alone
def test_an_agent_that_trusts_the_gateways_ca_registers(server, pki, tmp_path, trusted):
    node_id, token = add_node(server)
    agent, log = start_agent(tmp_path, server.url, node_id, token, ca_file=str(pki[trusted]), heartbeat_interval=0.5)
    try:
        wait_ready(server, node_id, agent, log)
        deadline = time.monotonic() + 10  # and goes on talking to it: heartbeats, claims
        while "registered as node" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(1.5)
        assert agent.poll() is None and errors(log) == []
    finally:
        agent.terminate()
        agent.wait(timeout=30)


@pytest.mark.parametrize("case", ["unrelated CA", "system CAs", "host name"])
def test_an_agent_refuses_a_gateway_whose_certificate_does_not_verify(server, pki, tmp_path, case):
    node_id, token = add_node(server)
    url = server.url.replace("127.0.0.1", "localhost") if case == "host name" else server.url  # cert: 127.0.0.1
    options = {} if case == "system CAs" else {"ca_file": str(pki["other_ca" if case == "unrelated CA" else "ca"])}
    started = time.monotonic()
    agent, log = start_agent(tmp_path, url, node_id, token, **options)  # 30 register retries: minutes if retried
    assert agent.wait(timeout=30) == 1
    assert time.monotonic() - started < 15, log.read_text()
    [line] = errors(log)
    assert "the gateway's certificate did not verify" in line and "exiting" in line
    assert ("Hostname mismatch" if case == "host name" else "unable to get local issuer certificate") in line
    assert node_state(server, node_id) == "configuring"


def test_an_agent_whose_ca_file_cannot_be_read_exits(server, tmp_path):
    node_id, token = add_node(server)
    agent, log = start_agent(tmp_path, server.url, node_id, token, ca_file=str(tmp_path / "missing.pem"))
    assert agent.wait(timeout=30) == 1
    [line] = errors(log)
    assert "missing.pem" in line and "exiting" in line
    assert node_state(server, node_id) == "configuring"


def test_jobs_reach_an_https_gateway_through_the_agents_relay(server, pki):
    """The relay into a job's network is plain TCP: TLS passes through it end to end, and the URL
    jobs get keeps its scheme (it is the public URL)."""
    from provisioner.agent.sandbox import _Relay, loopback_gateway

    assert loopback_gateway(server.url) == ("127.0.0.1", server.port)
    assert loopback_gateway("https://localhost/") == ("127.0.0.1", 443)
    listener = socket.create_server(("127.0.0.1", 0))
    relay = _Relay([listener], ("127.0.0.1", server.port))
    relay.start()
    try:
        relayed = f"https://127.0.0.1:{listener.getsockname()[1]}"  # the certificate names the address
        assert httpx.get(f"{relayed}/v1/health", verify=verify(pki["ca"])).status_code == 204
    finally:
        relay.close()



def test_artifacts_on_the_gateway_are_fetched_with_the_agents_ca(server, pki, tmp_path):
    """Signed URLs of an https gateway with a private CA: the agent trusts its ca_file for them
    (and the system CAs for the rest); without it the download fails verification."""
    from provisioner.agent import staging

    artifact = [{"url": f"{server.url}/v1/openapi.json"}]
    (tmp_path / "home").mkdir()
    staging.fetch_artifacts(str(tmp_path / "home"), artifact, str(tmp_path), ca_file=str(pki["ca"]))
    assert b'"openapi"' in (tmp_path / "home" / "openapi.json").read_bytes()
    with pytest.raises(staging.StageError, match="CERTIFICATE_VERIFY_FAILED"):
        staging.fetch_artifacts(str(tmp_path / "home"), artifact, str(tmp_path))


# --- the playbook ------------------------------------------------------------------------------

@pytest.fixture
def driver(tmp_path):
    driver = register()(str(tmp_path / "nodes"))
    yield driver
    for node in driver.list_nodes():  # never leave agents behind, even when a test fails
        driver.destroy_node(node)


@pytest.mark.slow
def test_the_playbook_writes_the_gateway_ca_and_the_real_agent_registers_over_https(server, pki, driver):
    from libcloud.compute.base import NodeSize

    from tests.images import containers_conf

    node_id, token = add_node(server)
    size = NodeSize(id="local-1cpu", name="", ram=512, disk=1, bandwidth=None, price=0, driver=driver,
                    extra={"cpus": 1})
    vm = driver.create_node(f"https-{uuid.uuid4().hex[:8]}", size, driver.list_images()[0])
    node_dir = Path(vm.extra["dir"])
    config = {"gateway": server.url, "node_id": node_id, "node_name": vm.name, "token": token,
              "work_dir": str(node_dir / "work"), "cpus": 1, "memory_mb": 512, "disk_gb": 1,
              "containers_conf": containers_conf(), "ca_file": str(node_dir / "gateway-ca.pem")}
    pem = pki["ca"].read_text()
    result = configure_node("127.0.0.1", str(node_dir), config, REPO / "provisioner" / "agent",
                            extravars={"agent_ca_pem": pem, "agent_ready_regex": "registered as node"})
    assert result.ok, result.error
    assert (node_dir / "gateway-ca.pem").read_text() == pem
    assert stat.S_IMODE((node_dir / "gateway-ca.pem").stat().st_mode) == 0o644
    assert node_state(server, node_id) == "ready"
    assert "Traceback" not in (node_dir / "agent.log").read_text()


@pytest.mark.slow
def test_the_playbook_restarts_the_agent_when_the_gateway_ca_changes(driver, pki, tmp_path):
    from tests.test_local_cloud import STAND_IN

    src = tmp_path / "src" / "agent"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "__main__.py").write_text(STAND_IN)
    vm = driver.create_node("ca-change", driver.list_sizes()[0], driver.list_images()[0])
    node_dir = Path(vm.extra["dir"])
    config = {"token": "t-" + uuid.uuid4().hex, "ca_file": str(node_dir / "gateway-ca.pem")}

    # No bundle (the service trusts the nodes' system CAs): no file.
    result = configure_node("127.0.0.1", str(node_dir), config, src, extravars={"agent_ca_pem": None})
    assert result.ok, result.error
    assert not (node_dir / "gateway-ca.pem").exists()
    pid = int((node_dir / "agent.pid").read_text())

    # A bundle, with the rest unchanged: written, and the agent restarts to use it.
    pem = pki["ca"].read_text()
    again = configure_node("127.0.0.1", str(node_dir), config, src, extravars={"agent_ca_pem": pem})
    assert again.ok, again.error
    assert (node_dir / "gateway-ca.pem").read_text() == pem
    assert stat.S_IMODE((node_dir / "gateway-ca.pem").stat().st_mode) == 0o644
    assert int((node_dir / "agent.pid").read_text()) != pid
    assert json.loads((node_dir / "agent.json").read_text()) == config
