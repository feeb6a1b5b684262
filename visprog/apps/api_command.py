"""``visprog api``: the HTTP API (:mod:`visprog.apps.api`) on uvicorn, or on Ray Serve (``--engine ray``:
replicas per GPU or on CPUs, each batching its own requests; :mod:`visprog.apps.api_ray`).

Without a token (``--token`` or ``$VISPROG_API_TOKEN``) the server listens on a loopback address only: anyone
who can reach the port could run programs and spend the LLM's budget.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import socket
from typing import Any, TextIO

from visprog.apps.console import UsageError
from visprog.errors import ConfigError

__all__ = ["TOKEN_ENV", "add_api_options", "api_command", "is_loopback"]

#: The environment variable that holds the API's bearer token.
TOKEN_ENV = "VISPROG_API_TOKEN"


def add_api_options(p: argparse.ArgumentParser) -> None:
    """The options of ``visprog api`` that are its own (the planner's are added by the CLI)."""
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument(
        "--token",
        default=None,
        help=f"the bearer token every /v1 request must carry (default: ${TOKEN_ENV}); needed to listen beyond loopback",
    )
    p.add_argument(
        "--window-ms",
        type=float,
        default=5.0,
        metavar="MS",
        help="how long the first program of an idle server waits for others to batch with (default 5; 0: none)",
    )
    p.add_argument("--max-batch", type=int, default=None, metavar="N", help="largest batched module call")
    p.add_argument("--max-concurrent", type=int, default=16, metavar="N", help="requests served at once (default 16)")
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        metavar="N",
        help="requests that wait for a slot; beyond them, 429 with Retry-After (default 64)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="longest a request may take, planning and running (default 300; --timeout is the LLM's)",
    )
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted image in MB (default 20)")
    p.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="serve here (uvicorn), or on Ray Serve: replicas per GPU or on CPUs, each batching its own requests",
    )
    p.add_argument(
        "--replicas",
        type=_replicas,
        default=None,
        metavar="N",
        help="ray: replicas (default: one per GPU, else 2 on CPUs)",
    )
    p.add_argument(
        "--replica-gpus",
        type=_gpus,
        default=None,
        metavar="F",
        help="ray: the GPUs each replica holds (default 1; 0.5: two replicas share a GPU)",
    )
    p.add_argument(
        "--ray-address", default=None, metavar="ADDRESS", help="ray: the cluster to join (default: start Ray here)"
    )


def _replicas(text: str) -> int:
    """``--replicas``: a whole number of 1 or more, else a usage error (exit status 2)."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {number}")
    return number


def _gpus(text: str) -> float:
    """``--replica-gpus``: a finite number above 0, else a usage error (exit status 2)."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 < number < math.inf):
        raise argparse.ArgumentTypeError(f"must be a finite number more than 0, got {text}")
    return number


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except socket.gaierror:
            return False
        return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def _check_engine(args: argparse.Namespace) -> None:
    """The Ray options only with ``--engine ray``; Ray Serve installed for it."""
    given = [f for f, v in (("--replicas", args.replicas), ("--replica-gpus", args.replica_gpus)) if v is not None]
    given += ["--ray-address"] if args.ray_address else []
    if args.engine != "ray":
        if given:
            raise UsageError(f"{', '.join(given)}: only with --engine ray")
        return
    from visprog.apps.api_ray import serve_missing

    missing = serve_missing()
    if missing is not None:
        raise UsageError(missing)


def api_command(args: argparse.Namespace, out: TextIO) -> int:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(args.host):
        raise UsageError(
            f"--host {args.host}: without a token the API listens on loopback only (127.0.0.1, ::1, localhost); "
            f"give --token TOKEN or set ${TOKEN_ENV} to listen on {args.host}"
        )
    _check_engine(args)
    from visprog.apps.task_commands import check_port, planner_options  # loaded only for `visprog api`

    runtime, options = planner_options(args)
    if not args.ray_address:  # a cluster's Serve proxies listen on its nodes, not here
        check_port(args.host, args.port)  # a busy port is one clear line, before FastAPI and the models load

    import uvicorn

    from visprog.apps.api import create_app
    from visprog.apps.api_service import ApiSettings
    from visprog.solving import create_planner

    try:
        settings = ApiSettings(
            token=token,
            window=args.window_ms / 1000,
            max_batch=args.max_batch,
            max_concurrent=args.max_concurrent,
            max_queue=args.max_queue,
            timeout=args.request_timeout,
            max_upload_bytes=int(args.max_upload_mb * 1_000_000),
            max_pixels=args.max_pixels,
        )
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if args.engine == "ray":
        return _serve_on_ray(args, settings, runtime, options, out)
    app = create_app(settings, runtime=runtime, planner_factory=lambda: create_planner(**options))
    auth = "a bearer token" if token else "no token (loopback only)"
    print(f"visprog API on http://{args.host}:{args.port} with {auth}; docs at /docs (Ctrl+C to stop)", file=out)
    out.flush()
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    try:
        server.run()
    except (OSError, SystemExit):  # uvicorn exits when it cannot bind: another server took the port meanwhile
        check_port(args.host, args.port)
        raise UsageError(f"the API could not start on {args.host}:{args.port}") from None
    return 0


def _serve_on_ray(args: argparse.Namespace, settings: Any, runtime: Any, options: dict[str, Any], out: TextIO) -> int:
    from visprog.apps.api_ray import PluginFile, ReplicaSettings, plugin_files, serve_on_ray
    from visprog.running.plugins import default_registry

    replica = ReplicaSettings(
        api=settings,
        planner=options,
        device=runtime.device_request,
        half=runtime.half,
        modules={k: dict(v) for k, v in runtime.modules.items()},
        llm=dict(runtime.llm),
        plugins=tuple(PluginFile.read(path) for path in plugin_files(default_registry())),
    )
    try:
        serve_on_ray(
            replica,
            host=args.host,
            port=args.port,
            out=out,
            address=args.ray_address,
            replicas=args.replicas,
            replica_gpus=args.replica_gpus if args.replica_gpus is not None else 1.0,
        )
    except ConfigError as e:  # no cluster at --ray-address, more replicas than GPUs, a replica that cannot start
        raise UsageError(str(e)) from None
    return 0
