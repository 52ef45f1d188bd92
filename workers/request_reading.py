"""Reading a request in the front worker's event loop: a connection moves from IDLE through HEAD and BODY to
BUSY as its bytes arrive, with the deadline of the phase it is in, and a complete request is admitted (handed
to a thread) or shed with 503 right there."""

from __future__ import annotations

import socket
import time

from workers import framing
from workers.board import over_limit
from workers.connections import BODY, BUSY, HEAD, IDLE, LINGER, Conn, answer

READ_SIZE = 256 * 1024
PREDICT_PATHS = (b"/", b"/predict")
STOP_KEEPALIVE_SECONDS = 1.0  # a stopping worker still answers a request already on its way (with close)


class RequestReading:
    """Mixed into FrontWorker, which provides the loop's side: `_register`, `_unregister`, `_close`, `_linger`,
    the deadlines and limits (`header_timeout`, `body_timeout`, `max_head`, `max_body`, `max_in_flight`), the
    shared `board`, the `jobs` queue and the request counters."""

    def _wait_request(self, conn: Conn, now: float) -> None:
        conn.state, conn.head, conn.body_end, conn.scan, conn.sent_continue = IDLE, None, -1, 0, False
        conn.deadline = now + (self.cfg.keepalive if self.alive else min(self.cfg.keepalive, STOP_KEEPALIVE_SECONDS))
        if conn.buf:  # pipelined: the next request is already here
            self._progress(conn, now)
            if conn.state == BUSY:
                return
        self._register(conn)

    def _on_readable(self, _fileobj, conn: Conn) -> None:
        want = READ_SIZE
        if conn.state == BODY and conn.body_end > 0:
            want = max(READ_SIZE, min(conn.body_end - len(conn.buf), 16 << 20))
        try:
            data = conn.sock.recv(want, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:  # the peer closed (or half-closed: it can send no more of a request)
            self._close(conn)
            return
        if conn.state == LINGER:
            return  # drained and dropped
        conn.buf += data
        self._progress(conn, time.monotonic())

    def _progress(self, conn: Conn, now: float) -> None:
        buf = conn.buf
        if conn.state == IDLE:
            conn.state, conn.deadline, conn.scan = HEAD, now + self.header_timeout, 0
        if conn.state == HEAD:
            end = buf.find(framing.HEAD_END, max(conn.scan - 3, 0))
            if end < 0:
                if len(buf) > self.max_head:
                    self._refuse(conn, 431, "Request Header Fields Too Large", "request head too large")
                    return
                conn.scan = len(buf)
                return
            head = conn.head = framing.parse_head(buf, end)
            if head.ambiguous:
                self._dispatch(conn, len(buf), close_after=True)
                return
            if head.content_length is not None and head.content_length > self.max_body:
                # The app answers 413 from the head alone; the body is never read, so the connection closes.
                self._dispatch(conn, min(len(buf), head.body_start), close_after=True)
                return
            conn.state, conn.deadline = BODY, now + self.body_timeout
            if head.chunked:
                conn.scan = head.body_start
            else:
                conn.body_end = head.body_start + (head.content_length or 0)
        if conn.state == BODY:
            head = conn.head
            if head.chunked and conn.body_end < 0:
                end, conn.scan, bad = framing.chunked_end(buf, conn.scan)
                if bad or (end is None and len(buf) - head.body_start > self.max_body + 65536):
                    self._dispatch(conn, len(buf), close_after=True)  # gunicorn's parser or the app answers it
                    return
                if end is not None:
                    conn.body_end = end
            if conn.body_end >= 0 and len(buf) >= conn.body_end:
                self._dispatch(conn, conn.body_end, close_after=False)
            elif head.expect_continue and not conn.sent_continue:
                conn.sent_continue = True
                self._write_now(conn, b"HTTP/1.1 100 Continue\r\n\r\n")

    def _write_now(self, conn: Conn, data: bytes) -> bool:
        """Write from the loop without waiting; False when the peer's window could not take it all."""
        try:
            return conn.sock.send(data, socket.MSG_DONTWAIT) == len(data)
        except OSError:
            return False

    def _refuse(self, conn: Conn, status: int, reason: str, message: str) -> None:
        self._write_now(conn, answer(status, reason, message, close=True))
        self._linger(conn)

    def _dispatch(self, conn: Conn, end: int, *, close_after: bool) -> None:
        """A whole request is in memory: admit it and hand it to a thread, or answer 503 here."""
        data = bytes(conn.buf[:end])
        del conn.buf[:end]
        self._unregister(conn)
        head = conn.head
        conn.state = BUSY
        if (head is not None and head.method == b"POST" and head.path in PREDICT_PATHS
                and over_limit(self.board.total_in_flight(int(time.monotonic() * 1000)), self.max_in_flight)):
            self._shed(conn, close_after)
            return
        self.in_flight += 1
        self.board.add_in_flight(1)
        self.jobs.put((conn, data, close_after))

    def _shed(self, conn: Conn, close: bool) -> None:
        message = (f"{self.max_in_flight} requests already in flight on this replica "
                   "(autoscaling.max_replica_concurrency); retry shortly")
        self.metrics.count_shed()
        if self._write_now(conn, answer(503, "Service Unavailable", message, close=close, retry_after=1)) and not close:
            self._wait_request(conn, time.monotonic())
        else:
            self._linger(conn)
