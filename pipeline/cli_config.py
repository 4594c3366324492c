"""`tokenhub config export|check`: configuration as code from the command line, offline (no server).

`export` writes the configuration stored in a data directory as a configuration file; `check` validates a
file with every rule the server applies, by applying it to a throwaway in-memory store (docs/config-file.md).
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import Any

from pipeline.settings import SettingsError, load_settings

__all__ = ["add_config_command", "config_command"]


def add_config_command(commands: Any) -> None:
    """Adds `config` to the `tokenhub` subcommands (pipeline/cli.py)."""
    config = commands.add_parser("config", help="export or check a configuration file (docs/config-file.md)")
    config.set_defaults(run=config_command)
    actions = config.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    export = actions.add_parser("export", help="write the stored configuration as a configuration file")
    export.add_argument("--data-dir", metavar="DIR", help="the server's data directory (TOKENHUB_DATA_DIR)")
    export.add_argument("--format", choices=["yaml", "json"], help="default: from --out's suffix, else yaml")
    export.add_argument("--out", metavar="FILE", help="write here (mode 0600) instead of stdout")
    check = actions.add_parser("check", help="validate a configuration file offline; exit 1 with the line if bad")
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--no-secrets", action="store_true", help="do not resolve api_key_env / api_key_file (keys not at hand)"
    )


def config_command(args: argparse.Namespace) -> int:
    if args.config_action == "export":
        return _export(args.data_dir, args.format, args.out)
    return _check(Path(args.file), resolve_secrets=not args.no_secrets)


# The server's modules load in the command that needs them, not at import: every `tokenhub` command line
# (`tokenhub healthcheck` every few seconds in a container) registers this one.


def _export(data_dir: str | None, fmt: str | None, out: str | None) -> int:
    from admin_ui.config_export import export_config, render
    from store.config_store import ConfigStore
    from store.secret_box import SecretBox

    try:
        settings = load_settings(data_dir=data_dir)
    except SettingsError as exc:
        print(f"tokenhub: {exc}", file=sys.stderr)
        return 2
    if not settings.database_url and not settings.sqlite_path.exists():
        print(f"tokenhub: no configuration store at {settings.sqlite_path} (--data-dir?)", file=sys.stderr)
        return 1
    box = SecretBox.from_key_file(settings.data_dir / ".secret-key")
    store = ConfigStore(settings.database_url or settings.sqlite_path, box)
    store.open()
    try:
        data, notes = export_config(store)
    finally:
        store.close()
    chosen = fmt or ("json" if out and out.endswith(".json") else "yaml")
    text = render(data, "json" if chosen == "json" else "yaml")
    for note in notes:
        print(f"tokenhub: {note}", file=sys.stderr)
    if out is None:
        sys.stdout.write(text)
        return 0
    path = Path(out)
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(text)
    print(f"tokenhub: wrote {path}", file=sys.stderr)
    return 0


def _check(path: Path, *, resolve_secrets: bool) -> int:
    """Every server-side rule, references included, against an empty configuration: a file that names an
    object it does not declare (a provider added through the admin API) fails here though a server that
    has it would take it."""
    from admin_ui.config_apply import ApplyTarget, apply_document
    from admin_ui.config_file import check_pipelines, read_config_file
    from pipeline.errors import ConfigFileInvalid
    from pipeline.registry import default_registry
    from pipeline.stage import parse_definition
    from store.config_store import ConfigStore
    from store.secret_box import SecretBox
    from store.vault import Vault
    from store.vault_crypto import KdfParams

    store = ConfigStore(":memory:", SecretBox(secrets.token_bytes(32)))
    store.open()
    try:
        doc = read_config_file(path, resolve_secrets=resolve_secrets)
        registry = default_registry()
        target = ApplyTarget(
            store=store,
            vault=Vault(enabled=False, params=KdfParams(), auto_lock_secs=0),
            env_providers=frozenset(),
            pipelines=check_pipelines(doc, lambda definition: parse_definition(definition, registry)),
            keys_file=None,
        )
        summary = apply_document(doc, target)
    except ConfigFileInvalid as exc:
        print(exc.describe(), file=sys.stderr)
        return 1
    finally:
        store.close()
    counts = ", ".join(f"{n} {kind}" for kind, c in summary["counts"].items() if (n := sum(c.values())))
    print(f"{path}: OK ({counts or 'empty'})")
    return 0
