"""``cvm serve``: run the gRPC decision service on a bundle.

Decisions come from the bundle with seeded exploration and exact propensities; every decision
is committed to the SQLite decision log before it is answered. SIGTERM stops it gracefully.

  cvm serve --bundle runs/mppo --port 50051 --log decisions.db
  cvm serve --bundle runs/mppo --workers 2 --exploration epsilon --epsilon 0.05 \\
      --token-file token.txt --tls-cert server.pem --tls-key server.key --metrics-port 9100
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cvm_rl.cli.common import CliError, bundle_dir

if TYPE_CHECKING:
    from server.app import ServerConfig
    from server.model import Exploration

HELP = "run the gRPC decision service on a bundle"
TOKEN_ENV = "CVM_AUTH_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, help="bundle directory or cvm train run dir")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=50051, help="port; 0 picks a free one")
    parser.add_argument(
        "--workers", type=int, default=1, help="serving processes sharing the port (SO_REUSEPORT)"
    )
    parser.add_argument(
        "--log", default="cvm-decisions.db", help="SQLite decision log (created if missing)"
    )
    parser.add_argument(
        "--no-log", action="store_true", help="keep no decision log (benchmarks only)"
    )
    parser.add_argument(
        "--no-log-probabilities",
        action="store_true",
        help="log the served propensity only, not each decision's full distribution",
    )
    parser.add_argument(
        "--durability",
        choices=["normal", "full"],
        default="normal",
        help="normal: rows survive a crash of the process; full: also power loss (fsync)",
    )
    parser.add_argument("--exploration", choices=["policy", "epsilon", "softmax"], default=None)
    parser.add_argument("--epsilon", type=float, help="exploration probability (epsilon mode)")
    parser.add_argument("--temperature", type=float, help="softmax temperature (softmax mode)")
    parser.add_argument("--learning-mode", choices=["online", "apprentice"], default="online")
    parser.add_argument(
        "--token-file",
        help=f"file holding the bearer token clients must send (or set {TOKEN_ENV})",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain (TLS on with --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key")
    parser.add_argument("--max-batch-rows", type=int, default=10_000)
    parser.add_argument("--metrics-port", type=int, help="Prometheus /metrics on 127.0.0.1")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to finish on SIGTERM")
    parser.add_argument("--no-admin", action="store_true", help="do not serve DecisionAdmin")
    parser.add_argument("--ready-file", help="write {port, pids} as JSON here once serving")


def exploration_from_args(args: argparse.Namespace) -> Exploration:
    """``--exploration`` with its parameter; by default softmax at 1 for score bundles would
    equal ``policy``, so the default is the bundle's own distribution."""
    from server.model import Exploration

    mode = args.exploration or (
        "epsilon" if args.epsilon is not None else "softmax" if args.temperature else "policy"
    )
    if mode == "epsilon":
        if args.epsilon is None:
            raise CliError("--epsilon: required with --exploration epsilon")
        param = args.epsilon
    elif mode == "softmax":
        param = 1.0 if args.temperature is None else args.temperature
    else:
        if args.epsilon is not None or args.temperature is not None:
            raise CliError("--epsilon/--temperature: only with --exploration epsilon/softmax")
        param = 0.0
    try:
        return Exploration(mode, param, args.learning_mode)  # type: ignore[arg-type]
    except ValueError as exc:
        raise CliError(f"--{'epsilon' if mode == 'epsilon' else 'temperature'}: {exc}") from None


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    from server.app import ServerConfig

    bundle = bundle_dir(args.bundle)
    token = os.environ.get(TOKEN_ENV)
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise CliError(f"--token-file: cannot read {args.token_file}: {exc}") from None
        if not token:
            raise CliError(f"--token-file: {args.token_file} is empty")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CliError("--tls-cert and --tls-key: give both to turn TLS on")
    for option in ("tls_cert", "tls_key"):
        value = getattr(args, option)
        if value is not None and not Path(value).is_file():
            raise CliError(f"--{option.replace('_', '-')}: {value} is not a file")
    if args.workers < 1:
        raise CliError(f"--workers: must be >= 1, got {args.workers}")
    if args.max_batch_rows < 1:
        raise CliError(f"--max-batch-rows: must be >= 1, got {args.max_batch_rows}")
    if not 0 <= args.port < 65536:
        raise CliError(f"--port: must be in [0, 65535], got {args.port}")
    return ServerConfig(
        bundle=bundle,
        log_path=None if args.no_log else args.log,
        exploration=exploration_from_args(args),
        auth_token=token or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        max_batch_rows=args.max_batch_rows,
        log_probabilities=not args.no_log_probabilities,
        synchronous=args.durability,
        admin=not args.no_admin,
        metrics_port=args.metrics_port,
        grace_s=args.grace,
    )


def run(args: argparse.Namespace) -> int:
    import asyncio

    from server.app import (
        configure_logging,
        load_serving_model,
        run_workers,
        serve,
        write_ready_file,
    )

    config = config_from_args(args)
    try:
        load_serving_model(config)  # refuse a bad bundle with the option's name, before binding
    except ValueError as exc:
        raise CliError(f"--bundle: {exc}") from None
    configure_logging()
    if args.workers > 1:
        return run_workers(args.host, args.port, config, args.workers, args.ready_file)
    address = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"

    def ready(port: int) -> None:
        if args.ready_file:
            write_ready_file(args.ready_file, port, [os.getpid()])

    try:
        asyncio.run(serve(address, config, ready=ready))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return 0
