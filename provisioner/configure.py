"""Configure a node: run playbooks/node.yml on it with ansible-runner.

Secrets: ``agent_config`` holds the node's token and reaches ansible only as extravars. Each run
gets a fresh private data dir (mode 0700) that also holds ANSIBLE_HOME, the local and (for local
connections) remote temp dirs, (for SSH) ssh's control sockets, and TMPDIR; it is deleted when the
run ends, whatever the outcome, after the run's ssh control masters are closed.
ansible-runner copies the whole process environment into the run's environment and into
``artifacts/<ident>/command``: here that environment is replaced by a small allow-list before the
run starts, so neither ansible nor the artifacts see the server's own secrets. ``os.environ`` is
never modified. Nothing here logs ``agent_config``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ansible_runner.interface import init_runner

log = logging.getLogger(__name__)

PLAYBOOK = Path(__file__).resolve().parent.parent / "playbooks" / "node.yml"
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


def _redact(text: str, secrets: set[str]) -> str:
    for s in secrets:
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
    secrets = _secret_strings(agent_config)
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

    pdd = tempfile.mkdtemp(prefix="prominence-configure-")
    status, rc, error = "error", None, None
    try:
        home = os.path.join(pdd, "ansible")
        tmp = os.path.join(pdd, "tmp")
        os.makedirs(tmp, mode=0o700)
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
        log.info("configuring node %s in %s over %s", host, node_dir, connection)
        runner = init_runner(
            private_data_dir=pdd,
            playbook=str(PLAYBOOK),
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
    duration = time.monotonic() - started
    if status == "successful":
        log.info("configured node %s in %.1f s", host, duration)
    else:
        log.warning("configuring node %s failed (%s) after %.1f s: %s", host, status, duration, error)
    return ConfigureResult(status=status, rc=rc, error=error, duration=duration)


__all__ = ["ConfigureResult", "configure_node", "PLAYBOOK"]
