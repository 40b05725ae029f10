"""Inside an interactive app's sandbox: start the app's server, and carry the front door's
connections to it.

Why: the server (gunicorn, `bokeh serve`, `streamlit run`) runs in its own network
namespace, where 127.0.0.1 is its own loopback and nothing of the platform is reachable;
the front door cannot reach that loopback either. The platform binds a unix socket in a
folder only it can open and passes the listening socket into the sandbox (fd LISTEN_FD);
this script, the sandbox's pid 1, accepts on it and copies bytes to 127.0.0.1:PORT, where
the server listens as Compute Studio started it. It speaks no HTTP: the front door
(services/app_proxy.py) is the proxy; this is a pipe. When the server exits this exits,
and bubblewrap ends the sandbox with every process in it.

On the Docker tier (runtime/app_container.py) no descriptor can be handed into a container:
LISTEN is then a path in a folder the platform bound in, where this binds the socket itself
(the front door opens it without following links and checks it is this uid's socket).

Runs with the model environment's interpreter (`python -I`), standard library only.
Usage: app_relay.py LISTEN_FD|SOCKET_PATH PORT -- ARGV...
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

CHUNK = 1 << 16


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


def relay_to(port: int):
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    return handle


def listener_of(listen: str) -> socket.socket:
    """The descriptor handed in, or a socket bound here at a path (0666: its folder guards it)."""
    if listen.isdigit():
        return socket.socket(fileno=int(listen))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(listen)
    os.chmod(listen, 0o666)
    listener.listen(128)
    return listener


async def serve(listen: str, port: int, argv: list[str]) -> int:
    listener = listener_of(listen)
    server = await asyncio.start_unix_server(relay_to(port), sock=listener)
    proc = subprocess.Popen(argv)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, proc.terminate)
    code = await asyncio.to_thread(proc.wait)
    server.close()
    return code


def main() -> int:
    listen, port, dashes, *argv = sys.argv[1:]
    if dashes != "--" or not argv:
        print("usage: app_relay.py LISTEN_FD|SOCKET_PATH PORT -- ARGV...", file=sys.stderr)
        return 2
    return asyncio.run(serve(listen, int(port), argv))


if __name__ == "__main__":
    sys.exit(main())
