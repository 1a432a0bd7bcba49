"""Configure a node: run playbooks/node.yml on it with ansible-runner (and, with the same
runner code, other playbooks such as playbooks/stop.yml: see ``run_playbook``).

Several nodes can be configured by one run (``configure_nodes``): each is a host of the inventory
with its own variables, and ansible runs them in parallel forks, sharing the controller's cost.
The agent goes as one zip application (``agent_archive``).

Secrets: ``agent_config`` holds the node's token and reaches ansible only as host variables. Each run
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
import zipfile
from dataclasses import dataclass, field, replace
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


def agent_archive(agent_src: Path, directory: str) -> str:
    """The agent package as one zip application (`python3 agent.pyz --config X`): one file to
    copy instead of a module run per source file. Byte-identical for identical sources (fixed
    timestamps, no __pycache__), so the playbook restarts agents only when their code changed."""
    path = os.path.join(directory, "agent.pyz")
    source = Path(agent_src)
    if not (source / "__main__.py").is_file():
        raise FileNotFoundError(f"no agent package (with a __main__.py) at {source}")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, data, zipfile.ZIP_DEFLATED)

        add("__main__.py", b"import runpy\nrunpy.run_module('agent', run_name='__main__', alter_sys=True)\n")
        for file in sorted(source.rglob("*")):
            relative = file.relative_to(source)
            if file.is_file() and "__pycache__" not in relative.parts and file.suffix != ".pyc":
                add(f"agent/{relative.as_posix()}", file.read_bytes())
    return path


@dataclass
class Target:
    """One host of a playbook run, with its own variables and how to reach it."""

    host: str  # the address (ssh), or a name (local)
    variables: dict = field(repr=False)
    connection: str = "ssh"  # ssh | local
    ssh_user: str | None = None
    ssh_port: int = 22
    ssh_key: str | None = field(default=None, repr=False)  # a private key's text (wins over ssh_key_file)
    ssh_key_file: str | None = None
    python_interpreter: str = "/usr/bin/python3"
    secrets: frozenset[str] = field(default=frozenset(), repr=False)  # redacted from its error


def node_target(
    host: str,
    node_dir: str,
    agent_config: dict,
    connection: str = "local",
    ssh_user: str | None = None,
    ssh_key_file: str | None = None,
    ssh_port: int = 22,
    install_packages: bool = False,
    python_interpreter: str = "/usr/bin/python3",
    extravars: dict | None = None,
    ssh_key: str | None = None,
) -> Target:
    """A node for playbooks/node.yml. ``connection`` is "local" (a local node: the agent runs
    under ``node_dir`` on this machine, started with nohup/setsid, never as a systemd unit, so the
    local driver can stop it) or "ssh" (a VM: the agent becomes a systemd unit where the host runs
    systemd). ``extravars`` are extra playbook variables (e.g. ``agent_ready_regex``,
    ``agent_env``, ``agent_ca_pem``); they cannot override the ones derived from the arguments."""
    variables = dict(extravars or {})
    variables.update({
        "node_dir": str(node_dir),
        "agent_config": agent_config,
        "python_interpreter": python_interpreter,
        "install_packages": bool(install_packages),
        "agent_use_systemd": False if connection == "local" else variables.get("agent_use_systemd", "auto"),
        "node_become": connection == "ssh" and ssh_user not in (None, "root"),
    })
    return Target(host, variables, connection, ssh_user, ssh_port, ssh_key, ssh_key_file, python_interpreter,
                  frozenset(_secret_strings(agent_config)))


def configure_nodes(targets: list[Target], agent_src: Path, timeout: int = 600) -> list[ConfigureResult]:
    """Run playbooks/node.yml on several nodes at once (one ansible run, a fork per node: the
    controller's cost is shared), and return each node's result, in order."""
    started = time.monotonic()
    for target in targets:
        log.info("configuring node %s in %s over %s", target.host, target.variables["node_dir"], target.connection)
    with tempfile.TemporaryDirectory(prefix="prominence-agent-") as directory:
        try:
            archive = agent_archive(agent_src, directory)
        except OSError as error:
            results = [ConfigureResult("error", None, str(error), 0.0) for _ in targets]
        else:
            results = run_playbook_on(PLAYBOOK, targets, {"agent_archive": archive}, timeout)
    results = [replace(result, duration=time.monotonic() - started) for result in results]
    for target, result in zip(targets, results):
        if result.ok:
            log.info("configured node %s in %.1f s", target.host, result.duration)
        else:
            log.warning("configuring node %s failed (%s) after %.1f s: %s", target.host, result.status,
                        result.duration, result.error)
    return results


def configure_node(host: str, node_dir: str, agent_config: dict, agent_src: Path, connection: str = "local",
                   ssh_user: str | None = None, ssh_key_file: str | None = None, ssh_port: int = 22,
                   install_packages: bool = False, timeout: int = 600, python_interpreter: str = "/usr/bin/python3",
                   extravars: dict | None = None) -> ConfigureResult:
    """Run playbooks/node.yml against one node (see node_target) and return how it went."""
    if connection not in ("local", "ssh"):
        return ConfigureResult("error", None, f"unknown connection {connection!r}", 0.0)
    target = node_target(host, node_dir, agent_config, connection, ssh_user, ssh_key_file, ssh_port,
                         install_packages, python_interpreter, extravars)
    return configure_nodes([target], agent_src, timeout)[0]


def run_playbook(playbook: str | os.PathLike, host: str, playbook_vars: dict, *, connection: str = "ssh",
                 ssh_user: str | None = None, ssh_key_file: str | None = None, ssh_key: str | None = None,
                 ssh_port: int = 22, timeout: int = 600, python_interpreter: str = "/usr/bin/python3",
                 secrets: set[str] | frozenset[str] = frozenset()) -> ConfigureResult:
    """``playbook`` on one host (see run_playbook_on). Logs nothing about the run: callers say
    what it was for."""
    target = Target(host, playbook_vars, connection, ssh_user, ssh_port, ssh_key, ssh_key_file, python_interpreter,
                    frozenset(secrets))
    return run_playbook_on(playbook, [target], {}, timeout)[0]


def run_playbook_on(playbook: str | os.PathLike, targets: list[Target], shared_vars: dict,
                    timeout: int = 600) -> list[ConfigureResult]:
    """Run ``playbook`` on ``targets`` (each with its variables as host variables; ``shared_vars``
    as extravars) in a fresh private data dir with a scrubbed environment (see the module's
    docstring), one fork per target; return each target's result, in order. An SSH key given as
    text is written to a 0600 file inside the private data dir, removed with it."""
    started = time.monotonic()
    unknown = [t.connection for t in targets if t.connection not in ("local", "ssh")]
    if unknown:
        return [ConfigureResult("error", None, f"unknown connection {unknown[0]!r}", 0.0) for _ in targets]
    names = [f"node{i}" for i in range(len(targets))]
    secrets = [set(t.secrets) | (_key_secrets(t.ssh_key) if t.ssh_key else set()) for t in targets]
    failures: dict[str, list[str]] = {}
    last_task: list[str] = []
    stats: dict = {}  # the play's recap: hosts processed, failed, unreachable

    def on_event(event: dict) -> bool:
        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            failures.setdefault(data.get("host") or "", []).append(_failure_message(data))
        elif kind == "playbook_on_task_start":
            last_task[:] = [data.get("task") or ""]
        elif kind == "playbook_on_stats":
            stats.update(data)
        return False  # keep nothing on disk (so runner.stats, read from there, stays empty)

    pdd = tempfile.mkdtemp(prefix="prominence-configure-")
    status, rc, run_error = "error", None, None
    try:
        home = os.path.join(pdd, "ansible")
        tmp = os.path.join(pdd, "tmp")
        os.makedirs(tmp, mode=0o700)
        hosts = {}
        for index, (name, target) in enumerate(zip(names, targets)):
            hostvars = {**target.variables, "ansible_connection": target.connection,
                        "ansible_python_interpreter": target.python_interpreter}
            if target.connection == "local":
                hostvars["ansible_remote_tmp"] = os.path.join(home, "remote_tmp")
            else:
                hostvars.update({
                    "ansible_host": target.host,
                    "ansible_port": int(target.ssh_port),
                    "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                                               "-o LogLevel=ERROR",
                })
                if target.ssh_user:
                    hostvars["ansible_user"] = target.ssh_user
                key_file = target.ssh_key_file
                if target.ssh_key:
                    key_dir = os.path.join(pdd, "ssh")
                    os.makedirs(key_dir, mode=0o700, exist_ok=True)
                    key_file = os.path.join(key_dir, f"id_{index}")
                    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "w") as handle:  # ssh wants the final newline
                        handle.write(target.ssh_key if target.ssh_key.endswith("\n") else target.ssh_key + "\n")
                if key_file:
                    hostvars["ansible_ssh_private_key_file"] = str(key_file)
            hosts[name] = hostvars
        envvars = {
            "PATH": _ansible_bin_dir() + os.pathsep + SYSTEM_PATH,
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_HOME": home,
            "ANSIBLE_LOCAL_TEMP": os.path.join(home, "tmp"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_DEPRECATION_WARNINGS": "False",
            "ANSIBLE_FORKS": str(max(5, len(targets))),
            "TMPDIR": tmp,
            # ssh's ControlPersist masters (60 s) get their sockets here, not in ~/.ansible/cp,
            # and are closed when the run ends (see _close_ssh_masters)
            "ANSIBLE_SSH_CONTROL_PATH_DIR": os.path.join(home, "cp"),
        }
        runner = init_runner(
            private_data_dir=pdd,
            playbook=str(playbook),
            inventory={"all": {"hosts": hosts}},
            extravars=shared_vars,
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
        if status not in ("successful", "failed"):
            if status == "timeout":
                run_error = f"timed out after {timeout} s" + (f" in task {last_task[0]}" if last_task else "")
            else:
                tail = ""
                try:
                    tail = runner.stdout.read()[-400:].strip()
                except Exception:  # noqa: BLE001 - best effort, the message is a hint
                    pass
                run_error = f"ansible-playbook ended {status} (rc={rc})" + (f": {tail}" if tail else "")
    except Exception as exc:  # noqa: BLE001 - a configuration failure is a result, not a crash
        status, run_error = "error", f"{type(exc).__name__}: {exc}"
    finally:
        _close_ssh_masters(os.path.join(pdd, "ansible", "cp"))
        shutil.rmtree(pdd, ignore_errors=True)
    duration = time.monotonic() - started
    results = []
    for name, secret in zip(names, secrets):
        failed = name in failures or name in (stats.get("failures") or {}) or name in (stats.get("dark") or {})
        if status in ("successful", "failed") and not failed and name in (stats.get("processed") or {}):
            results.append(ConfigureResult("successful", 0, None, duration))
            continue
        error = (failures.get(name) or [None])[-1] or run_error or f"ansible-playbook ended {status} (rc={rc})"
        results.append(ConfigureResult("failed" if status == "successful" else status, rc or 2,
                                       _redact(error, secret)[:_MAX_ERROR], duration))
    return results


__all__ = ["ConfigureResult", "Target", "configure_node", "configure_nodes", "node_target", "run_playbook",
           "run_playbook_on", "PLAYBOOK", "STOP_PLAYBOOK"]
