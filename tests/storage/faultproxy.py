"""A small HTTP fault proxy between a storage client and a real server (moto's S3, nginx).

    proxy = FaultProxy("127.0.0.1", upstream_port).start()
    proxy.add(Fault("cut", "imagenet-train-000001.tar", after_bytes=5000))   # drop mid-body
    proxy.add(Fault("status", ".tar", status=503, times=3))                 # a burst of 503s
    proxy.add(Fault("stall", ".tar", seconds=3))                            # a timeout
    proxy.add(Fault("corrupt", ".tar", after_bytes=100))                    # one byte flipped
    proxy.requests("GET", "imagenet-train-000001.tar")                      # what reached it
    proxy.stop()

It speaks just enough HTTP/1.1 to see request boundaries: it reads each request's head and
body (Content-Length), forwards it upstream with `Connection: close`, streams the response
back and closes the client connection after it (clients reconnect; counting stays exact). A
fault matches a request whose path contains `path_part` and fires `times` times.
"""

from __future__ import annotations

import dataclasses
import socket
import socketserver
import threading
import time
from typing import Literal

FaultKind = Literal["cut", "status", "stall", "corrupt"]


@dataclasses.dataclass
class Fault:
    kind: FaultKind
    path_part: str  # matches a request whose path contains it
    times: int = 1  # how many matching requests it hits
    after_bytes: int = 0  # cut/corrupt: body bytes passed through before the fault
    status: int = 503  # status: the answer sent instead of the server's
    seconds: float = 0.0  # stall: wait before forwarding
    method: str = "GET"
    range_part: str = ""  # and whose Range header contains this ("bytes=0-": first blocks)


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    range: str | None  # the Range header, if any


def _read_head(sock: socket.socket, buffer: bytearray) -> bytes | None:
    """Bytes up to and including the blank line; the rest stays in `buffer`. None at EOF."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    del buffer[:end]
    return head


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines if ":" in line)
    }


def _with_connection_close(head: bytes) -> bytes:
    lines = head.decode("latin-1").split("\r\n")
    kept = [line for line in lines[:-2] if not line.lower().startswith("connection:")]
    return ("\r\n".join([*kept, "Connection: close"]) + "\r\n\r\n").encode("latin-1")


class FaultProxy:
    """A threaded TCP server on 127.0.0.1 (a free port) that forwards HTTP to one upstream."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.lock = threading.Lock()
        self.faults: list[Fault] = []
        self.log: list[Request] = []
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def reset(self) -> None:
        """Forget every fault and every logged request."""
        with self.lock:
            self.faults.clear()
            self.log.clear()

    def requests(self, method: str | None = None, path_part: str = "") -> list[Request]:
        with self.lock:
            return [
                r
                for r in self.log
                if (method is None or r.method == method) and path_part in r.path
            ]

    def _take_fault(self, request: Request) -> Fault | None:
        with self.lock:
            self.log.append(request)
            for fault in self.faults:
                if (
                    fault.times > 0
                    and fault.method == request.method
                    and fault.path_part in request.path
                    and fault.range_part in (request.range or "")
                ):
                    fault.times -= 1
                    return dataclasses.replace(fault)
        return None

    def _serve(self, client: socket.socket) -> None:
        buffer = bytearray()
        head = _read_head(client, buffer)
        if head is None:
            return
        method, target = head.split(b" ", 2)[:2]
        headers = _headers(head)
        body_length = int(headers.get("content-length", "0"))
        while len(buffer) < body_length:
            chunk = client.recv(65536)
            if not chunk:
                return
            buffer += chunk
        request = Request(method.decode(), target.decode().split("?")[0], headers.get("range"))
        fault = self._take_fault(request)
        if fault is not None and fault.kind == "status":
            body = b"<Error><Code>SlowDown</Code><Message>fault proxy</Message></Error>"
            client.sendall(
                f"HTTP/1.1 {fault.status} Fault\r\nContent-Length: {len(body)}\r\n"
                "Content-Type: application/xml\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            return
        if fault is not None and fault.kind == "stall":
            time.sleep(fault.seconds)
        with socket.create_connection(self.upstream) as upstream:
            upstream.sendall(_with_connection_close(head) + bytes(buffer[:body_length]))
            reply = bytearray()
            response_head = _read_head(upstream, reply)
            if response_head is None:
                return
            try:
                client.sendall(response_head)
                self._forward_body(upstream, client, reply, fault)
            except OSError:
                return  # the client went away

    def _forward_body(
        self, upstream: socket.socket, client: socket.socket, pending: bytearray, fault
    ) -> None:
        sent = 0
        while True:
            chunk = bytes(pending) if pending else upstream.recv(65536)
            pending.clear()
            if not chunk:
                return
            if fault is not None and fault.kind in ("cut", "corrupt"):
                position = fault.after_bytes - sent
                if 0 <= position < len(chunk):
                    if fault.kind == "cut":
                        client.sendall(chunk[:position])
                        client.shutdown(socket.SHUT_RDWR)  # the connection drops mid-body
                        return
                    chunk = (
                        chunk[:position] + bytes([chunk[position] ^ 0xFF]) + chunk[position + 1 :]
                    )
            client.sendall(chunk)
            sent += len(chunk)
