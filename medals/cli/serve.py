"""`medals serve`: the engine as an HTTP server speaking protocol v1, with the model loaded once and kept warm.

Once it listens it prints one line, `MEDALS_SERVER_READY http://HOST:PORT`, on stdout; with `--port 0` the
system picks a free port and that line is how the Slicer launcher and the tests find it.

With `--exit-with-parent` the server shuts down once its stdin reaches end of file. A parent that keeps the
write end of a pipe to the server's stdin open (the Slicer launcher does) thereby takes the server with it
when it ends in any way, a crash or a kill included: the system closes the pipe of a process that died.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import threading
import time

from ..device import add_precision_option
from ..errors import InputError
from ..server.protocol import Limits

READY_MARKER = "MEDALS_SERVER_READY"
TOKEN_VARIABLE = "MEDALS_SERVER_TOKEN"
MIB = 1 << 20
EXIT_GRACE_SECONDS = 15.0
"""After its parent is gone, how long the server may take to shut down cleanly before it is ended outright."""

log = logging.getLogger("medals.server")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token: anyone on the network could use the GPU."""
    if not is_loopback(host) and not token:
        raise InputError(f"refusing to listen on {host} without a token: anyone who reaches it could send images "
                         f"and use the GPU; set {TOKEN_VARIABLE} (or --token), or keep --host 127.0.0.1")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 lets the system pick a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as error:
        raise InputError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def exit_when_stdin_closes(server, grace_seconds: float = EXIT_GRACE_SECONDS) -> threading.Thread:
    """Watch stdin on a daemon thread: at end of file ask the uvicorn `server` to shut down, and end the process
    outright if it is still running `grace_seconds` later (a job stuck in a long kernel, say)."""
    if sys.stdin is None:
        raise InputError("--exit-with-parent watches stdin, but this process has none: start it with a pipe on stdin")
    stdin = sys.stdin.fileno()

    def watch():
        try:
            while os.read(stdin, 4096):  # whatever the parent writes is ignored; b"" is end of file
                pass
        except OSError:  # a stdin that can no longer be read is as good as closed
            pass
        log.warning("stdin closed: the process that started this server is gone; shutting down")
        server.should_exit = True
        time.sleep(grace_seconds)
        os._exit(1)

    watchdog = threading.Thread(target=watch, name="medals-parent-watchdog", daemon=True)
    watchdog.start()
    return watchdog


def limits_from(args) -> Limits:
    return Limits(max_upload_bytes=int(args.max_upload_mb * MIB), max_request_bytes=int(args.max_request_mb * MIB),
                  max_voxels=args.max_voxels, max_prompts=args.max_prompts, cache_bytes=int(args.cache_mb * MIB),
                  body_timeout_seconds=args.body_timeout, refinement_bytes=int(args.refinement_mb * MIB))


def run_serve(args) -> int:
    import uvicorn

    from ..server.app import create_app
    from ..server.devices import parse_devices
    from ..server.engine import Engine

    check_exposure(args.host, args.token)
    limits = limits_from(args)
    engine = Engine.load(args.model, parse_devices(args.device), limits.refinement_bytes, args.precision)
    app = create_app(engine, limits, args.token)
    sock = bind(args.host, args.port)
    url = url_of(sock)

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets)
            if self.started:
                print(f"{READY_MARKER} {url}", flush=True)

    log.setLevel(args.log_level.upper())
    config = uvicorn.Config(app, log_level=args.log_level, access_log=args.log_level == "debug",
                            timeout_graceful_shutdown=5)
    server = AnnouncingServer(config)
    if args.exit_with_parent:
        exit_when_stdin_closes(server)
    server.run(sockets=[sock])
    return 0


def register(subparsers) -> None:
    defaults = Limits()
    serve = subparsers.add_parser("serve", help="run the engine as an HTTP server (protocol v1) for Slicer and "
                                                "`medals segment --server`")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only; any "
                                                           "other address needs a token)")
    serve.add_argument("--port", type=int, default=8765, help="port (0: pick a free one and print it)")
    serve.add_argument("--token", default=os.environ.get(TOKEN_VARIABLE),
                       help=f"bearer token clients must send (default: ${TOKEN_VARIABLE}; prefer the variable, a "
                            "command line is visible to other users)")
    serve.add_argument("--device", "--devices", action="append", metavar="DEVICES",
                       help="cuda, cuda:N or cpu (default: CUDA when present); several, comma-separated or repeated "
                            "(cuda:0,cuda:1), run one model replica and one job at a time on each, fed from one "
                            "queue; a device listed twice gets two workers (cpu,cpu: each with half the threads)")
    add_precision_option(serve)
    serve.add_argument("--model", default=None, help="model name or model folder (default: the only installed "
                                                     "model, else the bundled demo model)")
    serve.add_argument("--cache-mb", type=float, default=defaults.cache_bytes // MIB,
                       help="memory for uploaded images, least recently used dropped first")
    serve.add_argument("--refinement-mb", type=float, default=defaults.refinement_bytes // MIB,
                       help="memory for the last results' refinement states (a refinement of an evicted result "
                            "runs in full), least recently used dropped first")
    serve.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes // MIB,
                       help="largest compressed image upload")
    serve.add_argument("--max-request-mb", type=float, default=defaults.max_request_bytes // MIB,
                       help="largest job request (prompts and painted masks)")
    serve.add_argument("--max-voxels", type=int, default=defaults.max_voxels, help="largest image, in voxels")
    serve.add_argument("--max-prompts", type=int, default=defaults.max_prompts, help="most prompts in one job")
    serve.add_argument("--body-timeout", type=float, default=defaults.body_timeout_seconds, metavar="SECONDS",
                       help="drop a request whose body stops arriving for this long")
    serve.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    serve.add_argument("--exit-with-parent", action="store_true",
                       help="shut down when stdin reaches end of file: a parent holding a pipe to it (as Slicer "
                            "does) takes the server with it when it ends, even by a crash")
    serve.set_defaults(func=run_serve)
