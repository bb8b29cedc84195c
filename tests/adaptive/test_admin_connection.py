"""The admin reader's own HTTP/1.1 client: keep-alive, the framings Envoy answers with, and a stale
connection (closed by Envoy while idle) that must not cost a sample."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
from collections.abc import Callable

import pytest

from agent.adaptive.envoy_admin import AdminReader, AdminReadError

CLUSTERS = {"cluster_statuses": [{"name": "llm", "host_statuses": [
    {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}},
     "stats": [{"name": "rq_total", "value": "7"}, {"name": "rq_active", "value": 1},
               {"name": "rq_success", "value": "6"}]}]}]}
STATS = {"stats": [{"name": "modelarts.adaptive_answers.body.0.cluster.llm.instance.10.0.0.1:80", "value": 6},
                   {"name": "modelarts.adaptive_ttfb_us.cluster.llm.instance.10.0.0.1:80", "value": 6000}]}

Frame = Callable[[bytes], bytes]


def length_framed(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body


def chunked(body: bytes) -> bytes:
    # As Envoy's admin streams: the body in pieces, then the last chunk.
    half = len(body) // 2
    pieces = b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in (body[:half], body[half:]))
    return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + pieces + b"0\r\n\r\n"


class RawAdmin:
    """An HTTP/1.1 admin on a socket: answers `/clusters` and `/stats`, every request that came in one batch
    (what one write of the client brought) before the next; after `per_connection` batches it closes the
    connection without saying so (what a server does to a connection idle too long)."""

    def __init__(self, frame: Frame, per_connection: int = 1000) -> None:
        self.frame, self.per_connection = frame, per_connection
        self.accepted = 0
        self.requests: list[str] = []
        self.batches: list[int] = []  # requests per batch
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(50):  # bounded: a test opens a handful of connections
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.settimeout(5)
                buf = b""
                for _ in range(self.per_connection):
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(4096)
                        if not data:
                            break
                        buf += data
                    if b"\r\n\r\n" not in buf:
                        break
                    if select.select([conn], [], [], 0.2)[0]:  # the rest of a write split in two segments
                        buf += conn.recv(4096)
                    heads = buf.split(b"\r\n\r\n")
                    buf = heads.pop()
                    self.batches.append(len(heads))
                    for head in heads:
                        path = head.split(b" ")[1].decode()
                        self.requests.append(path)
                        body = json.dumps(CLUSTERS if path.startswith("/clusters") else STATS).encode()
                        conn.sendall(self.frame(body))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        self.server.close()
        self.thread.join(timeout=5)


@pytest.mark.parametrize("frame", [length_framed, chunked])
def test_reads_both_framings_on_one_kept_connection(frame: Frame) -> None:
    admin = RawAdmin(frame)
    reader = AdminReader([f"http://127.0.0.1:{admin.port}"])
    try:
        answers = [reader.read(["llm"]) for _ in range(3)]
    finally:
        reader.close()
        admin.close()
    for answer in answers:
        counters = answer[f"http://127.0.0.1:{admin.port}"]["llm"]["10.0.0.1:80"]
        assert (counters.rq_total, counters.rq_active, counters.rq_success) == (7, 1, 6)
        assert (counters.timed, counters.timed_us) == (6, 6000)
    assert admin.accepted == 1 and len(admin.requests) == 6


def test_a_read_asks_for_both_answers_in_one_write() -> None:
    # Issue 18: Envoy's admin runs on its main thread, on the worker's core; two requests in one write cost it
    # one wake-up per read instead of two (diagnostic at 1,000 rps: ~390 instead of ~440 us of its CPU per read).
    admin = RawAdmin(length_framed)
    reader = AdminReader([f"http://127.0.0.1:{admin.port}"])
    try:
        for _ in range(3):
            reader.read(["llm"])
    finally:
        reader.close()
        admin.close()
    assert admin.batches == [2, 2, 2], admin.batches


def test_a_connection_closed_while_idle_costs_no_sample() -> None:
    # Each connection answers once and is then closed by the server without a word. The read after it must
    # go out again on a new connection, not fail (a lost sample) or come back without its timing counters.
    admin = RawAdmin(length_framed, per_connection=1)
    reader = AdminReader([f"http://127.0.0.1:{admin.port}"])
    try:
        answers = [reader.read(["llm"]) for _ in range(2)]
    finally:
        reader.close()
        admin.close()
    for answer in answers:
        counters = answer[f"http://127.0.0.1:{admin.port}"]["llm"]["10.0.0.1:80"]
        assert counters.rq_total == 7 and (counters.timed, counters.timed_us) == (6, 6000)
    assert admin.accepted == 2


def test_an_admin_that_is_gone_is_a_read_error() -> None:
    admin = RawAdmin(length_framed)
    port = admin.port
    admin.close()
    reader = AdminReader([f"http://127.0.0.1:{port}"])
    try:
        with pytest.raises(AdminReadError):
            reader.read(["llm"])
    finally:
        reader.close()


def test_a_garbled_answer_is_a_read_error() -> None:
    admin = RawAdmin(lambda body: b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
    reader = AdminReader([f"http://127.0.0.1:{admin.port}"], timeout=2.0)
    try:
        with pytest.raises(AdminReadError):
            reader.read(["llm"])
    finally:
        reader.close()
        admin.close()
