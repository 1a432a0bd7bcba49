"""Server settings: command-line flags first, then PROMINENCE_* environment variables, then defaults."""
import os
import secrets
from dataclasses import dataclass
from pathlib import Path


def _env_number(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    public_url: str  # how jobs, agents and download links reach this server, e.g. http://127.0.0.1:8080
    run_provisioner: bool = True  # False: `serve --no-provisioner`, another process provisions
    idle_timeout: float = 600.0  # seconds a node may be idle before it is deleted
    heartbeat_timeout: float = 60.0  # seconds without a heartbeat before a node is lost
    local_cpus: int | None = None  # size of the `local` cloud (default: this machine)
    local_memory_mb: int | None = None
    agent_gateway_timeout: float = 900.0  # seconds an agent without the gateway keeps its jobs running
    client_timeout: float = 20.0  # seconds a client has to send a request's headers, and its body (per MiB)

    @classmethod
    def load(cls, data_dir: str | None = None, database_url: str | None = None, public_url: str | None = None,
             host: str = "127.0.0.1", port: int = 8080, **options) -> "Settings":
        path = Path(data_dir or os.environ.get("PROMINENCE_DATA_DIR") or "data").resolve()
        path.mkdir(parents=True, exist_ok=True)
        url = database_url or os.environ.get("PROMINENCE_DATABASE_URL") or f"sqlite:///{path / 'prominence.db'}"
        public = public_url or os.environ.get("PROMINENCE_PUBLIC_URL") or f"http://{host}:{port}"
        for name in ("idle_timeout", "heartbeat_timeout", "local_cpus", "local_memory_mb", "agent_gateway_timeout",
                     "client_timeout"):
            if options.get(name) is None and (value := _env_number(f"PROMINENCE_{name.upper()}")) is not None:
                options[name] = int(value) if name.startswith("local_") else value
        options = {k: v for k, v in options.items() if v is not None}
        return cls(data_dir=path, database_url=url, public_url=public.rstrip("/"), **options)

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
