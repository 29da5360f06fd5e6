"""`fitroom serve` and `fitroom keys ...`: the gateway's commands, added to services/cli.py's parser."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from services.common.config import get_settings

if TYPE_CHECKING:
    from services.gateway.keys import ApiKeyStore

EXIT_OK, EXIT_USAGE = 0, 2


def add_commands(commands: Any) -> None:
    """Add `serve` and `keys` to the `fitroom` subcommands (an argparse subparsers object)."""
    serve = commands.add_parser("serve", help="the REST API and the embedded pipeline in one process")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, help="pipeline worker threads (default FITROOM_WORKERS, 1)")
    serve.add_argument(
        "--processes",
        type=int,
        default=1,
        help="gateway processes on the port (distributed mode only: its state is in Redis; default 1)",
    )
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)

    keys = commands.add_parser("keys", help="API keys: each bound to a tenant, stored hashed")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="print a new API key for a tenant (created on first use)")
    create.add_argument("--tenant", required=True, help="tenant id: a-z, 0-9, _ and -")
    create.add_argument("--name", default="", help="a note to tell keys apart in `keys list`")
    create.add_argument("--json", action="store_true", help="print one JSON object")
    create.set_defaults(func=cmd_keys_create)
    listing = keys_commands.add_parser("list", help="key ids, tenants and states (never the keys)")
    listing.add_argument("--tenant")
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys_commands.add_parser("revoke", help="revoke a key by its id; requests with it then get 401")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys_revoke)
    secret = keys_commands.add_parser("webhook-secret", help="print a tenant's webhook signing secret")
    secret.add_argument("--tenant", required=True)
    secret.add_argument("--rotate", action="store_true", help="replace it; webhooks are signed with the new one")
    secret.set_defaults(func=cmd_keys_webhook_secret)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from services.gateway.app import create_app

    settings = get_settings()
    if args.workers is not None:
        if args.workers < 1:
            print("fitroom: error: --workers must be at least 1", file=sys.stderr)
            return EXIT_USAGE
        settings = settings.model_copy(update={"workers": args.workers})
    if args.processes < 1 or (args.processes > 1 and settings.mode != "distributed"):
        # Embedded mode's queue, pipeline threads and models live in the one process.
        print("fitroom: error: --processes over 1 needs FITROOM_MODE=distributed", file=sys.stderr)
        return EXIT_USAGE
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        # Long-polls would otherwise hold a shutdown for their full wait.
        "timeout_graceful_shutdown": max(1, int(settings.shutdown_grace_s)),
        "server_header": False,
    }
    if args.processes > 1:
        # uvicorn's supervisor starts each process from the factory: every one reads the settings
        # from the environment (FITROOM_*), as all the replicas of a Deployment do.
        os.environ["FITROOM_WORKERS"] = str(settings.workers)
        uvicorn.run("services.gateway.app:create_app", factory=True, workers=args.processes, **options)
    else:
        uvicorn.run(create_app(settings), **options)
    return EXIT_OK


def _keys() -> ApiKeyStore:  # imported lazily: the other commands need no database
    settings = get_settings()
    if settings.mode == "distributed":
        from services.gateway.redis_state import RedisKeyStore, connect

        return RedisKeyStore(connect(settings.redis_url))
    from services.gateway.db import Database
    from services.gateway.keys import KeyStore

    return KeyStore(Database(settings.gateway_db))


def cmd_keys_create(args: argparse.Namespace) -> int:
    try:
        new = _keys().create(args.tenant, args.name)
    except ValueError as exc:
        print(f"fitroom: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    record = {"api_key": new.key, "key_id": new.id, "tenant": new.tenant, "webhook_secret": new.webhook_secret}
    if args.json:
        print(json.dumps(record))
    else:
        for name, value in record.items():
            print(f"{name:15s} {value}")
        print("Keep the key now: only its hash is stored, it cannot be shown again.", file=sys.stderr)
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    for key in _keys().list(args.tenant):
        created = datetime.fromtimestamp(key.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        state = "revoked" if key.revoked_at else "active"
        print(f"{key.id}  {key.tenant:20s} {state:8s} {created}  {key.name}")
    return EXIT_OK


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    if not _keys().revoke(args.key_id):
        print(f"fitroom: error: no active key {args.key_id!r}", file=sys.stderr)
        return EXIT_USAGE
    print(f"revoked {args.key_id}")
    return EXIT_OK


def cmd_keys_webhook_secret(args: argparse.Namespace) -> int:
    keys = _keys()
    secret = keys.rotate_webhook_secret(args.tenant) if args.rotate else keys.webhook_secret(args.tenant)
    if secret is None:
        print(f"fitroom: error: no tenant {args.tenant!r} (create a key for it first)", file=sys.stderr)
        return EXIT_USAGE
    print(secret)
    return EXIT_OK
