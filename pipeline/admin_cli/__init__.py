"""``tokenhub admin <resource> <verb>``: the admin API from a terminal or a script (an HTTP client only).

Exit codes: 0 done, 1 the server refused (its error message on stderr) or could not be reached, 2 usage.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from pipeline.admin_cli.client import ClientError, connect
from pipeline.admin_cli.output import render
from pipeline.admin_cli.resources import RESOURCES, Command
from pipeline.settings import SettingsError, load_settings

__all__ = ["add_admin_command", "client_options"]

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class UsageError(ValueError):
    pass


def client_options() -> argparse.ArgumentParser:
    """Options every command that talks to the server takes (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="TokenHub's base URL (TOKENHUB_URL; default: the local server)")
    common.add_argument("--data-dir", metavar="DIR", help="where .admin-token is (TOKENHUB_DATA_DIR)")
    return common


def add_admin_command(commands: Any) -> None:
    admin = commands.add_parser(
        "admin",
        help="manage a running TokenHub through its admin API",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = client_options()
    common.add_argument("--json", action="store_true", help="print the server's JSON answer unchanged")
    resources = admin.add_subparsers(dest="resource", metavar="RESOURCE", required=True)
    for name, resource in RESOURCES.items():
        group = resources.add_parser(name, help=resource.help, description=resource.help)
        verbs = group.add_subparsers(dest="verb", metavar="VERB", required=True)
        for command in resource.commands:
            leaf = verbs.add_parser(command.verb, help=command.help, description=command.help, parents=[common])
            _arguments(leaf, command)
            leaf.set_defaults(run=lambda args, command=command: run(command, args))


def _arguments(leaf: argparse.ArgumentParser, command: Command) -> None:
    for placeholder in _PLACEHOLDER.findall(command.path):
        leaf.add_argument(placeholder, metavar=placeholder.upper())
    if command.text_field:
        leaf.add_argument("text", metavar=command.text_field.upper(), help=f"the {command.text_field} ('-' = stdin)")
    if command.body != "none":
        leaf.add_argument(
            "body",
            metavar="BODY",
            nargs="?" if command.body == "optional" else None,
            help="JSON text, @FILE, or - for stdin",
        )
    for name in command.query:
        leaf.add_argument(f"--{name.replace('_', '-')}", dest=f"q_{name}", metavar="VALUE")


def run(command: Command, args: argparse.Namespace) -> int:
    try:
        settings = load_settings(data_dir=args.data_dir)
        path, body, query = _request(command, args)
        client = connect(settings, args.url)
        answer = client.call(command.method, path, body=body, query=query)
    except (UsageError, SettingsError) as exc:
        print(f"tokenhub admin: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"tokenhub admin: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(answer.body.decode() + ("" if answer.body.endswith(b"\n") else "\n"))
    else:
        print(render(answer.json(), command.columns))
    return 0


def _request(command: Command, args: argparse.Namespace) -> tuple[str, Any, dict[str, str]]:
    def fill(match: re.Match[str]) -> str:
        return urllib.parse.quote(getattr(args, match.group(1)), safe="/:@")

    path = _PLACEHOLDER.sub(fill, command.path)
    body: Any = dict(command.fixed) or None
    if command.body != "none" and args.body is not None:
        body = _json_argument(args.body)
    if command.text_field:
        body = {command.text_field: sys.stdin.read() if args.text == "-" else args.text}
    if command.secrets:
        body = {name: _secret(name) for name in command.secrets}
    query = {name: value for name in command.query if (value := getattr(args, f"q_{name}")) is not None}
    return path, body, query


def _json_argument(text: str) -> Any:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {text[1:]}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"BODY is not JSON: {exc}") from None


def _secret(name: str) -> str:
    label = name.replace("_", " ")
    if sys.stdin.isatty():
        return getpass.getpass(f"{label}: ")
    line = sys.stdin.readline()
    if not line:
        raise UsageError(f"no {label} on stdin (one line per password)")
    return line.rstrip("\n")
