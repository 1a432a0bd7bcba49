"""Server settings: command-line flags first, then PROMINENCE_* environment variables, then defaults."""
import os
import re
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path


def _env_number(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.S)


class SettingsError(ValueError):
    """Settings that cannot work together (e.g. a TLS certificate without its key); one line."""


def _check_tls(cert: str | None, key: str | None, agent_ca: str | None) -> None:
    """Fails early and clearly, rather than with uvicorn's (or an agent's) traceback later."""
    if bool(cert) != bool(key):
        raise SettingsError("--tls-cert and --tls-key go together (PEM certificate chain and its private key)")
    if cert:
        for option, path in (("--tls-cert", cert), ("--tls-key", key)):
            if not os.access(path, os.R_OK) or not os.path.isfile(path):
                raise SettingsError(f"{option} {path}: not a readable file")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as error:
            raise SettingsError(f"--tls-cert {cert} with --tls-key {key}: not a PEM certificate and its "
                                f"private key ({error})") from None
    if agent_ca:
        try:
            ssl.create_default_context(cafile=agent_ca)
        except (ssl.SSLError, OSError) as error:
            raise SettingsError(f"--agent-ca {agent_ca}: not a readable PEM CA bundle ({error})") from None


_ORIGIN = re.compile(r"https?://[^/\s?#@]+")


def _check_origins(origins: list[str]) -> tuple[str, ...]:
    """CORS origins as browsers send them: scheme://host[:port], nothing after; or `*` for any."""
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise SettingsError(f"--cors-origin {origin}: not an origin (scheme://host[:port], e.g. "
                                "https://app.example.org, or *)")
    return tuple(origin.rstrip("/") for origin in origins)


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    public_url: str  # how jobs, agents and download links reach this server, e.g. http://127.0.0.1:8080
    run_provisioner: bool = True  # False: `serve --no-provisioner`, another process provisions
    idle_timeout: float | None = None  # seconds a local node may be idle before it is deleted (None: the record's)
    heartbeat_timeout: float = 60.0  # seconds without a heartbeat before a node is lost
    local_cpus: int | None = None  # size of the `local` cloud (default: this machine)
    local_memory_mb: int | None = None
    agent_gateway_timeout: float = 900.0  # seconds an agent without the gateway keeps its jobs running
    reconcile_interval: float = 30.0  # seconds between comparisons of the clouds' instances with the database
    client_timeout: float = 20.0  # seconds a client has to send a request's headers, and its body (per MiB)
    tls_cert: str | None = None  # PEM certificate chain: with tls_key, the service serves HTTPS
    tls_key: str | None = None  # PEM private key of tls_cert
    agent_ca: str | None = None  # PEM CA bundle agents trust (default tls_cert when TLS is on; None: system CAs)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API, e.g. https://app.example.org

    @classmethod
    def load(cls, data_dir: str | None = None, database_url: str | None = None, public_url: str | None = None,
             host: str = "127.0.0.1", port: int = 8080, **options) -> "Settings":
        path = Path(data_dir or os.environ.get("PROMINENCE_DATA_DIR") or "data").resolve()
        path.mkdir(parents=True, exist_ok=True)
        url = database_url or os.environ.get("PROMINENCE_DATABASE_URL") or f"sqlite:///{path / 'prominence.db'}"
        for name in ("tls_cert", "tls_key", "agent_ca"):
            options[name] = options.get(name) or os.environ.get(f"PROMINENCE_{name.upper()}") or None
        if options["tls_cert"] and options["tls_key"] and not options["agent_ca"]:
            options["agent_ca"] = options["tls_cert"]
        _check_tls(options["tls_cert"], options["tls_key"], options["agent_ca"])
        origins = options.get("cors_origins") or os.environ.get("PROMINENCE_CORS_ORIGINS", "").split(",")
        options["cors_origins"] = _check_origins([origin.strip() for origin in origins if origin.strip()])
        scheme = "https" if options["tls_cert"] else "http"
        public = public_url or os.environ.get("PROMINENCE_PUBLIC_URL") or f"{scheme}://{host}:{port}"
        for name in ("idle_timeout", "heartbeat_timeout", "local_cpus", "local_memory_mb", "agent_gateway_timeout",
                     "reconcile_interval", "client_timeout"):
            if options.get(name) is None and (value := _env_number(f"PROMINENCE_{name.upper()}")) is not None:
                options[name] = int(value) if name.startswith("local_") else value
        options = {k: v for k, v in options.items() if v is not None}
        return cls(data_dir=path, database_url=url, public_url=public.rstrip("/"), **options)

    @property
    def tls(self) -> bool:
        """True when this service serves HTTPS itself."""
        return bool(self.tls_cert and self.tls_key)

    @property
    def agent_ca_pem(self) -> str | None:
        """The CA bundle agents trust (the playbook writes it to the node), or None: the node's system CAs.
        Only the file's certificates: a --tls-cert file that also holds the private key (which
        --tls-key may name too) must not send that key to every node."""
        if not self.agent_ca:
            return None
        with open(self.agent_ca) as handle:
            certificates = _PEM_CERTIFICATE.findall(handle.read())
        return "".join(f"{certificate}\n" for certificate in certificates) or None

    @property
    def secret(self) -> bytes:
        """The token-signing secret: PROMINENCE_SECRET, else a random one kept in the data dir."""
        if env := os.environ.get("PROMINENCE_SECRET"):
            return env.encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        return path.read_text().strip().encode()
