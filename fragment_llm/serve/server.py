"""Running the server: the engine, the app, and uvicorn on a socket bound first."""

from __future__ import annotations

import socket

import uvicorn

from ..errors import UserError
from ..train.from_run import TrainedModel
from .api import Served
from .app import create_app, say
from .engine import Engine

# Streams still open when the server is told to stop get this long to end before they are cut.
GRACEFUL_SHUTDOWN_S = 3


def bind(host: str, port: int) -> socket.socket:
    """A listening socket: bound before the server starts, so its address (port 0: any free one) is
    known and said at once, and a client that connects meanwhile waits in the backlog."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UserError(f"--host {host}: {error.strerror}; give an address such as 127.0.0.1 or 0.0.0.0") from None
    family, kind, protocol, _, address = infos[0]
    sock = socket.socket(family, kind, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port}: {error.strerror}; pick another --port (--port 0 takes any free one)"
        ) from None
    sock.listen(128)
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def uvicorn_server(trained: TrainedModel, served: Served, api_key: str | None, parallel: int) -> uvicorn.Server:
    engine = Engine(trained, parallel).start()
    app = create_app(engine, served, api_key)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)
    return uvicorn.Server(config)


def serve(trained: TrainedModel, served: Served, host: str, port: int, api_key: str | None, parallel: int) -> None:
    """Serve until Ctrl-C (or SIGTERM), which uvicorn turns into a graceful stop."""
    sock = bind(host, port)
    server = uvicorn_server(trained, served, api_key, parallel)
    say(
        f"Serving {served.run} as `{served.name}` on {url(sock)} (the OpenAI API; {parallel} requests answered at "
        f"once, more wait their turn{'; API key required' if api_key else ''}); Ctrl-C stops"
    )
    server.run(sockets=[sock])
