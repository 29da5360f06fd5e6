"""`fitroom worker` and `fitroom worker-health`: distributed mode's stage workers, added to services/cli.py."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from typing import Any

from services.distributed.queues import QUEUES

EXIT_OK, EXIT_UNHEALTHY = 0, 1
STAGE_CHOICES = [*QUEUES, "all"]


def add_commands(commands: Any) -> None:
    """Add `worker` and `worker-health` to the `fitroom` subcommands (an argparse subparsers object)."""
    worker = commands.add_parser(
        "worker", help="a Celery worker serving one stage's queue (FITROOM_MODE=distributed), or all of them"
    )
    worker.add_argument("--stage", required=True, choices=STAGE_CHOICES)
    worker.add_argument(
        "--concurrency", type=int, default=1, help="worker processes; each loads the stage's models (default 1)"
    )
    worker.add_argument(
        "--pool", default="prefork", choices=["prefork", "solo"], help="prefork (default) survives a task that crashes"
    )
    worker.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    worker.add_argument(
        "--name", help="the node name before '@<host>' (default: the stage); unique per worker on one host"
    )
    worker.add_argument(
        "--metrics-port", type=int, help="serve Prometheus metrics (task outcomes, time worked and queued) on this port"
    )
    worker.set_defaults(func=cmd_worker)

    health = commands.add_parser("worker-health", help="exit 0 when this host's worker for STAGE answers a ping")
    health.add_argument("--stage", required=True, choices=STAGE_CHOICES)
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    health.add_argument("--name", help="the worker's --name, if it was given one")
    health.set_defaults(func=cmd_worker_health)


def node_name(stage: str, host: str = "%h") -> str:
    return f"{stage}@{host}"


def cmd_worker(args: argparse.Namespace) -> int:
    if args.concurrency < 1:
        print("fitroom: error: --concurrency must be at least 1", file=sys.stderr)
        return 2
    stages = list(QUEUES) if args.stage == "all" else [args.stage]
    # Read by the worker processes as they start, to load their stages' models (tasks.py).
    os.environ["FITROOM_WORKER_STAGES"] = ",".join(stages)
    if args.metrics_port:
        # Pool processes write their metrics to files here (set before prometheus_client is imported).
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="fitroom-metrics-"))
    from services.distributed.app import app

    if args.metrics_port:
        from services.distributed.metrics import serve

        serve(args.metrics_port)

    app.worker_main(
        [
            "worker",
            f"--queues={','.join(stages)}",
            f"--hostname={node_name(args.name or args.stage)}",
            f"--concurrency={args.concurrency}",
            f"--pool={args.pool}",
            f"--loglevel={args.log_level.upper()}",
            # No chatter between workers: they share nothing but the queues.
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return EXIT_OK


def cmd_worker_health(args: argparse.Namespace) -> int:
    from kombu.exceptions import OperationalError

    from services.distributed.app import app

    node = node_name(args.name or args.stage, socket.gethostname())
    try:
        replies = app.control.ping(destination=[node], timeout=args.timeout)
    except OperationalError as exc:
        print(f"{node}: the broker is unreachable ({exc})", file=sys.stderr)
        return EXIT_UNHEALTHY
    if any(node in reply for reply in replies):
        print(f"{node}: ok")
        return EXIT_OK
    print(f"{node}: no answer within {args.timeout:g} s", file=sys.stderr)
    return EXIT_UNHEALTHY
