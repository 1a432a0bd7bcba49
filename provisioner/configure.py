"""Configure a node: run playbooks/node.yml on it with ansible-runner (and, with the same
runner code, other playbooks such as playbooks/stop.yml: see ``run_playbook``).

Secrets: ``agent_config`` holds the node's token and reaches ansible only as extravars. Each run
gets a fresh private data dir (mode 0700) that also holds ANSIBLE_HOME, the local and (for local
connections) remote temp dirs, (for SSH) ssh's control sockets, and TMPDIR; it is deleted when the
run ends, whatever the outcome, after the run's ssh control masters are closed.
ansible-runner copies the whole process environment into the run's environment and into
``artifacts/<ident>/command``: here that environment is replaced by a small allow-list before the
run starts, so neither ansible nor the artifacts see the server's own secrets. ``os.environ`` is
never modified. Nothing here logs ``agent_config``. An SSH private key given as text
(``run_playbook(ssh_key=...)``) is written to a 0600 file in the private data dir, so it goes
with it; ansible sees only the file's path, and the key's text is redacted from error messages.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ansible_runner.interface import init_runner

log = logging.getLogger(__name__)

PLAYBOOK = Path(__file__).resolve().parent.parent / "playbooks" / "node.yml"
STOP_PLAYBOOK = PLAYBOOK.parent / "stop.yml"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Kept from the process environment (everything else of it is dropped).
_KEEP_FROM_PROCESS = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")
_MAX_ERROR = 600


@dataclass
class ConfigureResult:
    status: str  # successful | failed | timeout | canceled | error
    rc: int | None
    error: str | None  # "<failed task>: <message>", None on success
    duration: float  # seconds, the whole call

    @property
    def ok(self) -> bool:
        return self.status == "successful"


def _ansible_bin_dir() -> str:
    """The directory holding ansible-playbook: the venv's bin (stack-notes 5: it must be on PATH)."""
    here = Path(sys.executable).parent
    if (here / "ansible-playbook").exists():
        return str(here)
    found = shutil.which("ansible-playbook")
    return str(Path(found).parent) if found else str(here)


def _close_ssh_masters(control_dir: str) -> None:
    """Ends the ssh ControlPersist masters of a run: they would otherwise hold a session on the
    node for another 60 s after the run, with their sockets already deleted (so of no use)."""
    try:
        sockets = [os.path.join(control_dir, name) for name in os.listdir(control_dir)]
    except OSError:
        return
    for path in sockets:
        try:
            subprocess.run(["ssh", "-o", f"ControlPath={path}", "-O", "exit", "ansible-control-master"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
                           env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"})
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("could not close the ssh master %s: %s", path, exc)


def _secret_strings(value) -> set[str]:
    """Every string in ``agent_config`` long enough to be a secret, to redact from messages."""
    out: set[str] = set()
    if isinstance(value, dict):
        for v in value.values():
            out |= _secret_strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            out |= _secret_strings(v)
    elif isinstance(value, str) and len(value) >= 8:
        out.add(value)
    return out


def _key_secrets(key_text: str) -> set[str]:
    """The key, and each line of its body, to redact from messages."""
    out = {key_text, key_text.strip()}
    out |= {line.strip() for line in key_text.splitlines() if len(line.strip()) >= 16 and "-----" not in line}
    return {s for s in out if s}


def _redact(text: str, secrets: set[str]) -> str:
    for s in sorted(secrets, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


def _failure_message(event_data: dict) -> str:
    task = event_data.get("task") or "?"
    res = event_data.get("res") or {}
    parts = []
    msg = res.get("msg")
    if msg:
        parts.append(str(msg))
    stderr = (res.get("stderr") or "").strip()
    if stderr:
        parts.append(stderr)
    elif not msg and res.get("stdout"):
        parts.append(str(res["stdout"]).strip())
    return f"{task}: {' | '.join(parts) or 'failed'}"


def configure_node(
    host: str,
    node_dir: str,
    agent_config: dict,
    agent_src: Path,
    connection: str = "local",
    ssh_user: str | None = None,
    ssh_key_file: str | None = None,
    ssh_port: int = 22,
    install_packages: bool = False,
    timeout: int = 600,
    python_interpreter: str = "/usr/bin/python3",
    extravars: dict | None = None,
) -> ConfigureResult:
    """Run playbooks/node.yml against ``host`` and return how it went.

    ``connection`` is "local" (a local node: the agent runs under ``node_dir`` on this machine,
    started with nohup/setsid, never as a systemd unit, so the local driver can stop it) or
    "ssh" (a VM: the agent becomes a systemd unit where the host runs systemd). ``extravars``
    are extra playbook variables (e.g. ``agent_ready_regex``, ``agent_env``); they cannot
    override the ones derived from the arguments."""
    started = time.monotonic()
    if connection not in ("local", "ssh"):
        return ConfigureResult("error", None, f"unknown connection {connection!r}", 0.0)
    playbook_vars = dict(extravars or {})
    playbook_vars.update(
        {
            "node_dir": str(node_dir),
            "agent_src": str(Path(agent_src).absolute()),
            "agent_config": agent_config,
            "python_interpreter": python_interpreter,
            "install_packages": bool(install_packages),
            "agent_use_systemd": False if connection == "local" else playbook_vars.get("agent_use_systemd", "auto"),
            "node_become": connection == "ssh" and ssh_user not in (None, "root"),
        }
    )
    log.info("configuring node %s in %s over %s", host, node_dir, connection)
    result = run_playbook(PLAYBOOK, host, playbook_vars, connection=connection, ssh_user=ssh_user,
                          ssh_key_file=ssh_key_file, ssh_port=ssh_port, timeout=timeout,
                          python_interpreter=python_interpreter, secrets=_secret_strings(agent_config))
    result = replace(result, duration=time.monotonic() - started)
    if result.ok:
        log.info("configured node %s in %.1f s", host, result.duration)
    else:
        log.warning("configuring node %s failed (%s) after %.1f s: %s", host, result.status, result.duration,
                    result.error)
    return result


def run_playbook(
    playbook: str | os.PathLike,
    host: str,
    playbook_vars: dict,
    *,
    connection: str = "ssh",
    ssh_user: str | None = None,
    ssh_key_file: str | None = None,
    ssh_key: str | None = None,
    ssh_port: int = 22,
    timeout: int = 600,
    python_interpreter: str = "/usr/bin/python3",
    secrets: set[str] | frozenset[str] = frozenset(),
) -> ConfigureResult:
    """Run ``playbook`` against ``host`` with ``playbook_vars`` as extravars, in a fresh private
    data dir with a scrubbed environment (see the module's docstring), and return how it went.

    ``connection`` is "local" or "ssh". For SSH, ``ssh_key`` is a private key's text (written to a
    0600 file inside the private data dir, removed with it; it wins over ``ssh_key_file``).
    ``secrets`` are strings to redact from the error message (the key's text always is). Logs
    nothing about the run: callers say what it was for."""
    started = time.monotonic()
    if connection not in ("local", "ssh"):
        return ConfigureResult("error", None, f"unknown connection {connection!r}", 0.0)
    secrets = set(secrets)
    if ssh_key:
        secrets |= _key_secrets(ssh_key)
    failures: list[str] = []
    last_task: list[str] = []

    def on_event(event: dict) -> bool:
        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            failures.append(_failure_message(data))
        elif kind == "playbook_on_task_start":
            last_task[:] = [data.get("task") or ""]
        return False  # keep nothing on disk

    hostvars: dict = {
        "ansible_connection": connection,
        "ansible_python_interpreter": python_interpreter,
    }
    if connection == "ssh":
        hostvars.update(
            {
                "ansible_host": host,
                "ansible_port": int(ssh_port),
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            }
        )
        if ssh_user:
            hostvars["ansible_user"] = ssh_user
        if ssh_key_file:
            hostvars["ansible_ssh_private_key_file"] = str(ssh_key_file)

    pdd = tempfile.mkdtemp(prefix="prominence-configure-")
    status, rc, error = "error", None, None
    try:
        home = os.path.join(pdd, "ansible")
        tmp = os.path.join(pdd, "tmp")
        os.makedirs(tmp, mode=0o700)
        if connection == "ssh" and ssh_key:
            key_dir = os.path.join(pdd, "ssh")
            os.makedirs(key_dir, mode=0o700)
            key_path = os.path.join(key_dir, "id_key")
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as key_file:
                key_file.write(ssh_key if ssh_key.endswith("\n") else ssh_key + "\n")  # ssh wants the newline
            hostvars["ansible_ssh_private_key_file"] = key_path
        envvars = {
            "PATH": _ansible_bin_dir() + os.pathsep + SYSTEM_PATH,
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_HOME": home,
            "ANSIBLE_LOCAL_TEMP": os.path.join(home, "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_PYTHON_INTERPRETER": python_interpreter,
            "TMPDIR": tmp,
        }
        if connection == "local":
            envvars["ANSIBLE_REMOTE_TEMP"] = os.path.join(home, "remote_tmp")
        else:
            # ssh's ControlPersist masters (60 s) get their sockets here, not in ~/.ansible/cp,
            # and are closed when the run ends (see _close_ssh_masters)
            envvars["ANSIBLE_SSH_CONTROL_PATH_DIR"] = os.path.join(home, "cp")
        runner = init_runner(
            private_data_dir=pdd,
            playbook=str(playbook),
            inventory={"all": {"hosts": {host: hostvars}}},
            extravars=playbook_vars,
            envvars=envvars,
            quiet=True,
            timeout=timeout,
            rotate_artifacts=1,
            event_handler=on_event,
            cancel_callback=lambda: False,  # else ansible-runner takes over SIGINT/SIGTERM
        )
        # ansible-runner seeded its environment with os.environ: keep only what we chose.
        env = runner.config.env
        scrubbed = {k: v for k, v in env.items() if k not in os.environ or os.environ[k] != v or k in envvars}
        scrubbed.update({k: os.environ[k] for k in _KEEP_FROM_PROCESS if k in os.environ and k not in scrubbed})
        scrubbed.setdefault("LANG", "C.UTF-8")
        env.clear()
        env.update(scrubbed)
        runner.run()
        status, rc = runner.status, runner.rc
        if status != "successful":
            if failures:
                error = failures[-1]
            elif status == "timeout":
                error = f"timed out after {timeout} s" + (f" in task {last_task[0]}" if last_task else "")
            else:
                tail = ""
                try:
                    tail = runner.stdout.read()[-400:].strip()
                except Exception:  # noqa: BLE001 - best effort, the message is a hint
                    pass
                error = f"ansible-playbook ended {status} (rc={rc})" + (f": {tail}" if tail else "")
    except Exception as exc:  # noqa: BLE001 - a configuration failure is a result, not a crash
        status, error = "error", f"{type(exc).__name__}: {exc}"
    finally:
        if connection == "ssh":
            _close_ssh_masters(os.path.join(pdd, "ansible", "cp"))
        shutil.rmtree(pdd, ignore_errors=True)
    if error:
        error = _redact(error, secrets)[:_MAX_ERROR]
    return ConfigureResult(status=status, rc=rc, error=error, duration=time.monotonic() - started)


__all__ = ["ConfigureResult", "configure_node", "run_playbook", "PLAYBOOK", "STOP_PLAYBOOK"]
