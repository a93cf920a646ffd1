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
from cvm_rl.logs.schema import Durability, ExplorationMode, LearningMode, values

if TYPE_CHECKING:
    from pydantic import ValidationError

    from server.config import Exploration, ServerConfig

HELP = "run the gRPC decision service on a bundle"
TOKEN_ENV = "CVM_AUTH_TOKEN"
# The option behind each ServerConfig field a refused value can come from.
_OPTIONS = {
    "bundle": "--bundle",
    "log_path": "--log",
    "auth_token": "--token-file",
    "tls_cert": "--tls-cert",
    "tls_key": "--tls-key",
    "max_batch_rows": "--max-batch-rows",
    "max_receive_bytes": "--max-request-bytes",
    "bundle_root": "--bundle-root",
    "synchronous": "--durability",
    "metrics_port": "--metrics-port",
    "grace_s": "--grace",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, help="bundle directory or cvm train run dir")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
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
        choices=values(Durability),
        default=Durability.NORMAL.value,
        help="normal: rows survive a crash of the process; full: also power loss (fsync)",
    )
    parser.add_argument(
        "--exploration",
        choices=values(ExplorationMode),
        default=None,
        help="policy: the bundle's own distribution; epsilon: the greedy action, or with "
        "probability --epsilon a uniform eligible one; softmax: of the bundle's scores at "
        "--temperature (kind mlp only). Default: epsilon with --epsilon, softmax with "
        "--temperature, else policy",
    )
    parser.add_argument("--epsilon", type=float, help="exploration probability (epsilon mode)")
    parser.add_argument(
        "--temperature", type=float, help="softmax temperature (softmax mode; 1 if omitted)"
    )
    parser.add_argument(
        "--learning-mode",
        choices=values(LearningMode),
        default=LearningMode.ONLINE.value,
        help="online: execute the policy's draw; apprentice: execute the caller's baseline "
        "action and log the policy's draw beside it",
    )
    parser.add_argument(
        "--token-file",
        help=f"file holding the bearer token clients must send (or set {TOKEN_ENV})",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain (TLS on with --tls-key)")
    parser.add_argument("--tls-key", help="PEM private key (TLS on with --tls-cert)")
    parser.add_argument(
        "--max-batch-rows",
        type=int,
        default=5_000,  # server.config.DEFAULT_MAX_BATCH_ROWS (not imported: --help stays light)
        help="most rows one DecideBatch may hold (the default keeps the largest answer under "
        "the 4 MiB gRPC clients accept by default)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=16 * 1024 * 1024,
        help="largest request message read; a bigger one is RESOURCE_EXHAUSTED",
    )
    parser.add_argument(
        "--bundle-root",
        help="DecisionAdmin.LoadBundle loads bundles (or run directories) under this directory "
        "only (default: the directory holding --bundle)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="Prometheus /metrics on 127.0.0.1 (with --workers, one port for all workers)",
    )
    parser.add_argument("--grace", type=float, default=5.0, help="seconds to finish on SIGTERM")
    parser.add_argument("--no-admin", action="store_true", help="do not serve DecisionAdmin")
    parser.add_argument("--ready-file", help="write {port, pids} as JSON here once serving")


def exploration_from_args(args: argparse.Namespace) -> Exploration:
    """``--exploration`` with its parameter; by default softmax at 1 for score bundles would
    equal ``policy``, so the default is the bundle's own distribution."""
    from pydantic import ValidationError

    from cvm_rl.config import error_message
    from server.config import Exploration

    mode = ExplorationMode(
        args.exploration
        or (
            "epsilon"
            if args.epsilon is not None
            else "softmax"
            if args.temperature is not None
            else "policy"
        )
    )
    if mode == ExplorationMode.EPSILON:
        if args.epsilon is None:
            raise CliError("--epsilon: required with --exploration epsilon")
        param = args.epsilon
    elif mode == ExplorationMode.SOFTMAX:
        param = 1.0 if args.temperature is None else args.temperature
    else:
        if args.epsilon is not None or args.temperature is not None:
            raise CliError("--epsilon/--temperature: only with --exploration epsilon/softmax")
        param = 0.0
    try:
        return Exploration(mode=mode, param=param, learning_mode=LearningMode(args.learning_mode))
    except ValidationError as exc:
        option = "--epsilon" if mode == ExplorationMode.EPSILON else "--temperature"
        raise CliError(f"{option}: {error_message(exc)}") from None


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    from pydantic import ValidationError

    from server.config import ServerConfig

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
    if args.bundle_root is not None and not Path(args.bundle_root).is_dir():
        raise CliError(f"--bundle-root: {args.bundle_root} is not a directory")
    if not 0 <= args.port < 65536:
        raise CliError(f"--port: must be in [0, 65535], got {args.port}")
    try:
        return ServerConfig(
            bundle=bundle,
            log_path=None if args.no_log else args.log,
            exploration=exploration_from_args(args),
            auth_token=token or None,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            max_batch_rows=args.max_batch_rows,
            max_receive_bytes=args.max_request_bytes,
            bundle_root=args.bundle_root,
            log_probabilities=not args.no_log_probabilities,
            synchronous=Durability(args.durability),
            admin=not args.no_admin,
            metrics_port=args.metrics_port,
            grace_s=args.grace,
        )
    except ValidationError as exc:
        raise CliError(_config_error(exc)) from None


def _config_error(exc: ValidationError) -> str:
    """``--option: message`` for a value ServerConfig refused."""
    from cvm_rl.config import error_message

    loc = exc.errors()[0]["loc"]
    option = _OPTIONS.get(str(loc[0])) if loc else None
    message = error_message(exc)
    return message if option is None else f"{option}: {message}"


def run(args: argparse.Namespace) -> int:
    import asyncio

    from server.app import load_serving_model, serve
    from server.jsonlog import configure_logging
    from server.workers import run_workers, write_ready_file

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
