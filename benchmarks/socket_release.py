"""Sockets and kernel memory left behind by clients that never read (issue 7, item 3).

Starts ``wsgateway serve`` (uvloop) from a source tree, attacks it with N raw WebSocket
clients that read nothing after the handshake, waits past the heartbeat and the close
timeout, and prints what the server still holds: its sockets (psutil), the bytes queued in
the kernel on its port (``ss``, orphans included), and the time SIGTERM takes.

    python benchmarks/socket_release.py --attack slow --clients 20
    python benchmarks/socket_release.py --attack ping --clients 20 --source /path/to/old/tree
    python benchmarks/socket_release.py --attack ping --sigterm-now   # clients still connected

Attacks: ``slow`` (subscribers cut with 1013), ``heartbeat`` (missed pongs with unread
bytes in the transport), ``ping`` (a ping flood), ``orphan`` (missed pongs with everything
unread already in the kernel). Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import psutil


def client_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + masked


def never_reading_client(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /ws/market HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        "".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", choices=["slow", "heartbeat", "ping", "orphan"])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--source", default=os.getcwd(), help="tree to run wsgateway from")
    parser.add_argument(
        "--sigterm-now",
        action="store_true",
        help="SIGTERM right after the attack, every client still connected (none is cut)",
    )
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGATEWAY_")}
    env.pop("PYTHONPATH", None)
    env |= {"WSGATEWAY_CONNECTIONS_PER_MINUTE": "100000", "WSGATEWAY_LOG_LEVEL": "WARNING"}
    if args.attack in ("heartbeat", "orphan") or args.sigterm_now:
        env |= {"WSGATEWAY_HEARTBEAT": "2", "WSGATEWAY_MAX_OUTBOX_BYTES": str(64 << 20)}
    server = subprocess.Popen(
        [sys.executable, "-m", "wsgateway", "serve", "--port", "0"],
        cwd=args.source,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert server.stdout is not None
    port = int(re.search(r":(\d+) ", server.stdout.readline()).group(1))  # type: ignore[union-attr]
    process = psutil.Process(server.pid)
    url = f"http://127.0.0.1:{port}"

    def held() -> int:
        return sum(1 for c in process.net_connections("tcp") if c.status != psutil.CONN_LISTEN)

    def metric(name: str) -> float:
        with urllib.request.urlopen(url + "/metrics") as response:
            lines = response.read().decode().splitlines()
        return sum(float(line.split()[-1]) for line in lines if re.match(name + r"[ {]", line))

    def kernel_queued() -> int:
        out = subprocess.run(
            ["ss", "-tmnH", "state", "all", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
        ).stdout
        return sum(int(w) for w in re.findall(r"skmem:\(r\d+,rb\d+,t\d+,tb\d+,f\d+,w(\d+)", out))

    clients = [never_reading_client(port) for _ in range(args.clients)]
    started = time.monotonic()
    if args.attack == "ping":

        def flood(sock: socket.socket) -> None:
            sock.settimeout(2)
            frames = client_frame(9, b"p" * 125) * 128
            try:
                for _ in range(700):  # 11 MB of pings
                    sock.sendall(frames)
            except OSError:
                pass

        threads = [threading.Thread(target=flood, args=(s,)) for s in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        for sock in clients:
            sock.sendall(client_frame(1, b'{"type":"subscribe","topics":["*"]}'))
        time.sleep(0.3)
        body = json.dumps(
            {"messages": [{"channel": "market", "topic": "t", "data": "x" * 8000}] * 10}
        ).encode()
        for rounds in range(100_000):
            if args.attack == "slow" and args.sigterm_now and rounds == 100:
                break
            if args.attack == "slow" and metric("wsgateway_connections_active") == 0:
                break
            if args.attack == "heartbeat" and metric("wsgateway_outbox_bytes") > len(clients) * 2e5:
                break
            if args.attack == "orphan" and rounds == 12:  # ~1 MB each: the kernel takes it all
                break
            request = urllib.request.Request(
                url + "/api/publish", body, {"Content-Type": "application/json"}
            )
            urllib.request.urlopen(request).close()
    print(f"{args.attack} x{args.clients}: attack took {time.monotonic() - started:.1f} s")
    if not args.sigterm_now:
        time.sleep(13)  # past the heartbeat (2 s + 1 s) and close_timeout (5 s)
    print(
        f"  {time.monotonic() - started:.0f} s in: server holds {held()} sockets, "
        f"connections_active {metric('wsgateway_connections_active'):.0f}, "
        f"kernel queues {kernel_queued() / 2**20:.1f} MiB on the port, "
        f"RSS {process.memory_info().rss / 2**20:.0f} MiB"
    )
    stopping = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        code: int | str = server.wait(60)
    except subprocess.TimeoutExpired:
        code = "none (killed after 60 s)"
        server.kill()
        server.wait()
    print(f"  SIGTERM: exit {code} in {time.monotonic() - stopping:.1f} s")
    for sock in clients:
        sock.close()


if __name__ == "__main__":
    main()
