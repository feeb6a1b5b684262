"""``visprog api``: the HTTP API (:mod:`visprog.apps.api`) on uvicorn.

Without a token (``--token`` or ``$VISPROG_API_TOKEN``) the server listens on a loopback address only: anyone
who can reach the port could run programs and spend the LLM's budget.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
from typing import TextIO

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


def api_command(args: argparse.Namespace, out: TextIO) -> int:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(args.host):
        raise UsageError(
            f"--host {args.host}: without a token the API listens on loopback only (127.0.0.1, ::1, localhost); "
            f"give --token TOKEN or set ${TOKEN_ENV} to listen on {args.host}"
        )
    from visprog.apps.task_commands import check_port, planner_options  # loaded only for `visprog api`

    runtime, options = planner_options(args)
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
