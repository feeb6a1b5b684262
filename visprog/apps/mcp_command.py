"""``visprog mcp``: the MCP server (:mod:`visprog.apps.mcp_server`) over stdio or streamable HTTP.

    visprog mcp [--transport stdio|http] [--host 127.0.0.1] [--port 8001] [the planner's and modules' options]

Over stdio, standard output carries the protocol alone: the server's log, the planner's progress and the models'
loading lines go to standard error. Over HTTP the endpoint is ``http://HOST:PORT/mcp``. Images are read from file
paths over stdio and over HTTP on a loopback address (``--no-paths``: base64 only); on any other address, base64
only unless ``--paths`` is given.

This file holds the command's options and its body; the MCP SDK loads only when the command runs.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
from collections.abc import Callable
from typing import Any, TextIO

from visprog.errors import VisprogError

__all__ = ["add_mcp_parser", "mcp_command"]

#: The HTTP transport's default port (``visprog serve`` has 7860, the HTTP API 8000).
DEFAULT_PORT = 8001


def add_mcp_parser(
    sub: Any,
    parents: list[argparse.ArgumentParser],
    add_planner_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    """The ``mcp`` command in ``sub`` (the CLI's subparsers), with the planner's and modules' options."""
    p = sub.add_parser(
        "mcp",
        parents=parents,
        help="the MCP server: visprog's tools for agents (ask, verify, edit, run and check programs), over stdio or "
        "streamable HTTP",
        description="Serve visprog's tools to an MCP client: ask_image, verify_images, edit_image, run_program, "
        "check_program, list_modules. Over stdio, standard output carries the protocol alone.",
    )
    p.add_argument(
        "--transport",
        choices=["stdio", "http"],
        default="stdio",
        help="stdio: the client starts this command and talks on its standard input and output (default); "
        "http: streamable HTTP on --host:--port, endpoint /mcp",
    )
    p.add_argument("--host", default="127.0.0.1", help="with --transport http: the address to listen on (127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"with --transport http: the port ({DEFAULT_PORT})")
    p.add_argument(
        "--paths",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read images from file paths the client names (default: over stdio and over HTTP on a loopback "
        "address; elsewhere only base64 images are taken)",
    )
    p.add_argument(
        "--max-request-mb",
        type=float,
        default=20.0,
        help="with --transport http: the largest request in MB, base64 images included (default 20)",
    )
    add_planner_options(p)
    p.set_defaults(func=mcp_command, quiet=False)


def mcp_command(args: argparse.Namespace, out: TextIO) -> int:
    """Serve until the client goes (stdio: standard input closes) or Ctrl+C."""
    try:
        import anyio
        import mcp  # noqa: F401  (the SDK: an optional dependency)
    except ImportError as e:
        raise VisprogError(
            f"visprog mcp needs the MCP SDK, an optional dependency ({e}): pip install 'visprog[mcp]'"
        ) from None

    from visprog.apps.console import stderr_of
    from visprog.apps.mcp_server import ToolSettings, build_server
    from visprog.apps.task_commands import check_port, planner_lines, planner_options
    from visprog.solving import create_planner

    err = stderr_of(args)
    runtime, options = planner_options(args)
    over_http = args.transport == "http"
    if over_http:
        check_port(args.host, args.port)  # a busy port is one clear line, before anything loads
    loopback = not over_http or _is_loopback(args.host)
    settings = ToolSettings(
        runtime=runtime,
        planner_factory=lambda: create_planner(**options),
        allow_paths=loopback if args.paths is None else args.paths,
        max_pixels=args.max_pixels,
        on_event=planner_lines(1, args.repair, err),
    )
    server = build_server(settings)
    if not over_http:
        print("visprog MCP server on stdio (6 tools; Ctrl+C or closing standard input stops it)", file=err)
        anyio.run(server.run_stdio_async)
        return 0

    import uvicorn

    app = server.streamable_http_app(host=args.host, max_request_body_size=int(args.max_request_mb * 1_000_000))
    if not loopback:
        print(
            f"warning: {args.host} is not a loopback address and the MCP server asks for no token: whoever reaches "
            "it can run programs on this machine",
            file=err,
        )
    print(f"visprog MCP server on http://{_url_host(args.host)}:{args.port}/mcp (Ctrl+C to stop)", file=out)
    out.flush()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: loopback when every address it has is
        try:
            found = socket.getaddrinfo(host, None)
        except socket.gaierror:
            return False
        return bool(found) and all(ipaddress.ip_address(a[4][0]).is_loopback for a in found)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
