"""`prominence-server cloud ...` and `node list|drain|delete`: admins manage clouds and nodes on
the server's own database (like `token create`, no token needed: access to the data dir is the
permission).

Credentials are read from a file or stdin, never from the command line (other users see argv),
and no command prints them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

import yaml

from schema.errors import DomainError


def _service(args: argparse.Namespace):
    from gateway.services.clouds import CloudService
    from gateway.settings import Settings
    from schema.credentials import CredentialBox
    from schema.db import make_engine, upgrade

    settings = Settings.load(args.data_dir, args.database_url)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    return CloudService(engine, CredentialBox.for_data_dir(settings.data_dir))


def _load(text: str, what: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise DomainError(f"{what} is not valid YAML{where}") from None


def _read(path: str | None, what: str) -> Any:
    try:
        text = sys.stdin.read() if path in (None, "-") else open(path, encoding="utf-8").read()
    except OSError as error:
        raise DomainError(f"cannot read {path}: {error.strerror}") from None
    return _load(text, what)


def _settings_pairs(pairs: list[str]) -> dict[str, Any]:
    values = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field:
            raise DomainError(f"--set {pair!r}: expected FIELD=VALUE")
        values[field.replace("-", "_")] = _load(value, f"--set {field}")
    return values


def _clock(t: float | None) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _add(args):
    data = _read(args.file, "the cloud file") if args.file else {}
    if not isinstance(data, dict):
        raise DomainError("the cloud file must hold one mapping")
    data.update({k: v for k, v in (("name", args.name), ("provider", args.provider)) if v})
    data.update(_settings_pairs(args.set))
    _print(_service(args).add(data).to_dict())


def _update(args):
    _print(_service(args).update(args.name, _settings_pairs(args.set)).to_dict())


def _show(args):
    _print(_service(args).get(args.name).to_dict())


def _list(args):
    views = _service(args).list()
    if args.json:
        _print([v.to_dict() for v in views])
        return
    print(f"{'NAME':<16} {'PROVIDER':<10} {'ENABLED':<8} {'HEALTH':>6} {'PENALTY BOX UNTIL':<21} "
          f"{'NODES':>5} {'BOOTING':>7} {'CPUS':>5} {'SPEND':>9}")
    for v in views:
        print(f"{v.spec.name:<16} {v.spec.provider:<10} {'yes' if v.spec.enabled else 'no':<8} {v.health:>6.2f} "
              f"{_clock(v.penalty_until):<21} {v.instances:>5} {v.booting:>7} {v.cpus:>5} {v.spend:>9.4f}")


def _remove(args):
    _service(args).remove(args.name)
    print(f"removed {args.name}")


def _enable(args):
    _service(args).set_enabled(args.name, args.command_name == "enable")
    print(f"{args.command_name}d {args.name}")


def _set_credentials(args):
    credentials = _read(args.file, "the credentials file")
    _service(args).set_credentials(args.name, credentials)
    print(f"credentials of {args.name} set")


def _apply(args):
    documents = _read(args.file, "the cloud file")
    if isinstance(documents, dict):
        documents = documents.get("clouds", [documents]) if "clouds" in documents else [documents]
    for line in _service(args).apply(documents):
        print(line)


def _nodes(args):
    views = _service(args).nodes(args.cloud, include_gone=args.all)
    if args.json:
        _print([v.to_dict() for v in views])
        return
    print(f"{'ID':>5} {'NAME':<34} {'CLOUD':<12} {'FLAVOUR':<14} {'STATE':<12} {'ADDRESS':<16} {'CPUS':>4} "
          f"{'PRICE/H':>8} {'HEARTBEAT':<21}")
    for v in views:
        print(f"{v.id:>5} {v.name:<34} {v.cloud:<12} {v.flavour:<14} {v.state:<12} {v.address:<16} {v.cpus:>4} "
              f"{v.price:>8.4f} {_clock(v.last_heartbeat):<21}")


def _drain(args):
    node = _service(args).drain_node(args.id)
    print(f"node {node.id} ({node.name}) is draining: it takes no new jobs and is deleted once its jobs are done")


def _delete(args):
    node = _service(args).delete_node(args.id)
    print(f"node {node.id} ({node.name}) is deleted: its jobs went back to the queue, and the provisioner "
          "destroys its VM")


def _common(command: argparse.ArgumentParser) -> argparse.ArgumentParser:
    command.add_argument("--data-dir", help="the server's data dir (default ./data, or PROMINENCE_DATA_DIR)")
    command.add_argument("--database-url", help="the server's database (default SQLite in the data dir)")
    return command


def add_commands(commands) -> None:
    cloud = commands.add_parser("cloud", help="clouds (admins)").add_subparsers(dest="cloud_command", required=True)
    add = _common(cloud.add_parser("add", help="add a cloud"))
    add.add_argument("name", nargs="?")
    add.add_argument("--provider", help="libcloud provider name: local, ssh, ec2, openstack, gce, azure_arm...")
    add.add_argument("--file", help="YAML or JSON mapping of the cloud's fields")
    add.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                     help="a field (VALUE in YAML: --set 'flavours=[{name: m1, cpus: 2, memory_mb: 4096, "
                          "disk_gb: 20, price: 0.05}]'); repeatable")
    add.set_defaults(run=_add)
    change = _common(cloud.add_parser("update", help="change fields of a cloud"))
    change.add_argument("name")
    change.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", required=True)
    change.set_defaults(run=_update)
    for name, run, text in (("show", _show, "a cloud's settings and state (never its credentials)"),
                            ("remove", _remove, "remove a cloud without nodes"),
                            ("enable", _enable, "let the provisioner use a cloud"),
                            ("disable", _enable, "stop creating nodes on a cloud")):
        command = _common(cloud.add_parser(name, help=text))
        command.add_argument("name")
        command.set_defaults(run=run, command_name=name)
    listing = _common(cloud.add_parser("list", help="clouds with health, penalty box, nodes and spend"))
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_list)
    credentials = _common(cloud.add_parser("set-credentials", help="set or rotate a cloud's credentials "
                                                                    "(a YAML mapping from --file or stdin)"))
    credentials.add_argument("name")
    credentials.add_argument("--file", help="default: stdin")
    credentials.set_defaults(run=_set_credentials)
    apply = _common(cloud.add_parser("apply", help="add or update the clouds of a YAML file"))
    apply.add_argument("file")
    apply.set_defaults(run=_apply)

    node = commands.add_parser("node", help="nodes (admins)").add_subparsers(dest="node_command", required=True)
    listing = _common(node.add_parser("list", help="nodes with cloud, flavour, state, price"))
    listing.add_argument("--cloud")
    listing.add_argument("--all", action="store_true", help="also nodes that are gone")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=_nodes)
    for name, run, text in (("drain", _drain, "let a node finish its jobs, take no new ones, then go"),
                            ("delete", _delete, "take a node out of the pool now (its jobs are requeued)")):
        command = _common(node.add_parser(name, help=text))
        command.add_argument("id", type=int)
        command.set_defaults(run=run)
