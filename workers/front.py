"""The replica's gunicorn worker class: one event loop reads every request whole, with deadlines, before a
thread runs it.

gunicorn's gthread worker hands a fresh connection to a worker thread, which waits up to 5 s for its first
bytes and then reads headers and body with blocking calls and no deadline; its event loop closes connections
gracefully with a blocking linger. At `threads_per_process: 1`, one client that sends a body shorter than its
Content-Length, or headers a byte a second, holds the only thread for as long as it likes. Here the event loop
owns every connection until its request is complete (head and body in memory), so a slow or idle peer costs a
file descriptor and a few bytes, never a thread:

- a connection waiting for a request is closed after `--keep-alive` seconds;
- a request's head must arrive within `--header-timeout` seconds of its first byte, its body within
  `--body-timeout` seconds of the end of its head; past either, 408 and the connection is closed;
- a response that the peer does not read within `--body-timeout` seconds is abandoned (the thread's socket
  sends time out after that long);
- closing lingers in the loop (half-close, drain until the peer closes or two seconds pass), never blocking it.

Keep-alive connections spread over the worker processes through the shared board (`workers.board`): a worker
accepts only while it holds no more connections than the least loaded live worker. A complete prediction
request is admitted only while fewer than `autoscaling.max_replica_concurrency` requests are in flight in the
whole replica; above it the loop itself answers 503 with Retry-After, without waiting for a thread.

Settings come from the environment the supervisor gives gunicorn (REPLICA_HEADER_TIMEOUT, REPLICA_BODY_TIMEOUT,
REPLICA_MAX_REQUEST_SIZE, REPLICA_MAX_REPLICA_CONCURRENCY), gunicorn's own flags for the rest (`--keep-alive`,
`--threads`, `--worker-connections`, `--graceful-timeout`). HTTP/1.x only, without TLS (a TLS-terminating
proxy or load balancer sits in front when one is needed).
"""

from __future__ import annotations

import errno
import os
import queue
import selectors
import socket
import struct
import threading
import time
from collections import deque

from gunicorn import util
from gunicorn.workers import base

from workers.board import Board, may_accept
from workers.connections import BODY, BUSY, HEAD, IDLE, LINGER, Conn
from workers.request_reading import STOP_KEEPALIVE_SECONDS, RequestReading
from workers.request_threads import RequestThreads

LINGER_SECONDS = 2.0  # how long a closing connection may take to send its FIN after ours
SWEEP_SECONDS = 0.1  # deadline resolution
BALANCE_SECONDS = 0.01  # how often the other workers' counts are read while nothing else changes
BEAT_SECONDS = 0.25


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


class FrontWorker(RequestReading, RequestThreads, base.Worker):
    board: Board | None = None  # created in the master, before any fork; every worker maps the same file

    @classmethod
    def check_config(cls, cfg, log) -> None:
        if cfg.is_ssl:
            raise RuntimeError("workers.front.FrontWorker serves plain HTTP/1.x; terminate TLS in front of it")
        if cls.board is None:
            cls.board = Board.create(cfg.worker_tmp_dir)

    # -- set-up in the worker process -------------------------------------------------------------------------
    def init_process(self) -> None:
        self.header_timeout = _env_float("REPLICA_HEADER_TIMEOUT", 10.0)
        self.body_timeout = _env_float("REPLICA_BODY_TIMEOUT", 30.0)
        self.max_body = int(os.environ.get("REPLICA_MAX_REQUEST_SIZE") or 64 << 20)
        self.max_in_flight = int(os.environ.get("REPLICA_MAX_REPLICA_CONCURRENCY") or 1024)
        self.max_head = self.cfg.limit_request_line + self.cfg.limit_request_fields * (
            self.cfg.limit_request_field_size + 2) + 4
        if type(self).board is None:  # run without check_config (a bare worker in a test)
            type(self).board = Board.create(self.cfg.worker_tmp_dir)
        self.board.claim()
        self.poller = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.n_open = 0  # connections not lingering: what the board compares between workers
        self.in_flight = 0
        self.accepting = False
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.done: deque = deque()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.listener_names = {}
        for listener in self.sockets:
            listener.setblocking(False)
            self.listener_names[listener.fileno()] = listener.getsockname()
        from workers import metrics  # after fork: prometheus' multiprocess files are per process

        self.metrics = metrics
        super().init_process()

    def run(self) -> None:
        # The application may say when it can serve (the replica's: once its models are loaded), so that a
        # worker still starting leaves new connections to its ready siblings.
        self.app_ready = getattr(self.wsgi, "replica_ready", None)
        self.wsgi.replica_board = self.board  # /healthz reads every worker's heartbeat from it
        self.poller.register(self.wake_r, selectors.EVENT_READ, (self._on_wake, None))
        self.poller.register(self.PIPE[0], selectors.EVENT_READ, (self._on_signal_pipe, None))
        for _ in range(self.cfg.threads):
            threading.Thread(target=self._serve_jobs, name="request", daemon=True).start()
        now = time.monotonic()
        next_beat = next_sweep = next_balance = now
        while self.alive:
            now = time.monotonic()
            if now >= next_beat:
                self.notify()
                self.board.beat(int(now * 1000))
                next_beat = now + BEAT_SECONDS
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
            if now >= next_sweep:
                self._sweep(now)
                next_sweep = now + SWEEP_SECONDS
            if now >= next_balance:
                self._balance(now)
                next_balance = now + BALANCE_SECONDS
            # While not accepting, wake every BALANCE_SECONDS to see whether the other workers caught up.
            self._dispatch_events((next_sweep if self.accepting else min(next_sweep, next_balance)) - now)
        self._stop()

    def _dispatch_events(self, timeout: float) -> None:
        try:
            events = self.poller.select(max(timeout, 0.0))
        except InterruptedError:
            return
        for key, _ in events:
            handler, conn = key.data
            handler(key.fileobj, conn)

    # -- accepting ----------------------------------------------------------------------------------------------
    def _balance(self, now: float) -> None:
        """Listen while this worker may take a connection (fewest connections among ready live workers)."""
        ready = self.app_ready is None or self.app_ready()
        self.board.set_counts(self.n_open, self.in_flight, ready)
        want = (self.alive and len(self.conns) < self.cfg.worker_connections
                and may_accept(self.n_open, ready, self.board.others(int(now * 1000))))
        if want == self.accepting:
            return
        for listener in self.sockets:
            if want:
                self.poller.register(listener, selectors.EVENT_READ, (self._on_accept, None))
            else:
                self.poller.unregister(listener)
        self.accepting = want

    def _on_accept(self, listener, _conn) -> None:
        try:
            sock, client = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.log.warning("cannot accept a connection: %s", e)
                return
            raise
        # A blocking socket whose sends time out in the kernel (SO_SNDTIMEO): a thread's writes wait at most the
        # body timeout for a peer that does not read its response, without the poll() before every send that a
        # Python-level timeout costs. The loop never blocks on it: it reads only what select() said is there
        # and writes with MSG_DONTWAIT.
        sock.setblocking(True)
        seconds = int(self.body_timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", seconds, int((self.body_timeout - seconds) * 1e6)))
        conn = Conn(sock, client, self.listener_names[listener.fileno()])
        self.conns[conn.fd] = conn
        self.n_open += 1
        self._wait_request(conn, time.monotonic())
        self._balance(time.monotonic())

    # -- the connection's place in the loop ----------------------------------------------------------------------
    def _register(self, conn: Conn) -> None:
        if not conn.registered:
            self.poller.register(conn.fd, selectors.EVENT_READ, (self._on_readable, conn))
            conn.registered = True

    def _unregister(self, conn: Conn) -> None:
        if conn.registered:
            self.poller.unregister(conn.fd)
            conn.registered = False

    # -- after a thread -----------------------------------------------------------------------------------------
    def _on_wake(self, _fileobj, _conn) -> None:
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        now = time.monotonic()
        while self.done:
            conn, keep = self.done.popleft()
            self.in_flight -= 1
            self.board.add_in_flight(-1)
            if keep and self.alive:
                self._wait_request(conn, now)
            elif keep and conn.buf:
                self._wait_request(conn, now)  # a request already sent to a stopping worker is answered
            else:
                self._linger(conn)

    def _on_signal_pipe(self, fileobj, _conn) -> None:
        try:
            os.read(fileobj, 4096)
        except BlockingIOError:
            pass

    # -- closing -------------------------------------------------------------------------------------------------
    def _linger(self, conn: Conn) -> None:
        """Half-close and let the peer's FIN (or the linger deadline) finish it, so unread request bytes do
        not turn the close into a reset that cuts the last response short."""
        if conn.state == LINGER:
            return
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        if conn.state != LINGER:
            self.n_open -= 1
        conn.state, conn.deadline, conn.buf = LINGER, time.monotonic() + LINGER_SECONDS, bytearray()
        self._register(conn)
        self._balance(time.monotonic())

    def _close(self, conn: Conn) -> None:
        if conn.state == BUSY:
            return  # the thread finishes with it; its completion closes it
        self._unregister(conn)
        if self.conns.pop(conn.fd, None) is not None and conn.state != LINGER:
            self.n_open -= 1
        util.close(conn.sock)
        conn.state = LINGER

    def _sweep(self, now: float) -> None:
        for conn in [c for c in self.conns.values() if c.state != BUSY and c.deadline <= now]:
            if conn.state == HEAD:
                self._refuse(conn, 408, "Request Timeout",
                             f"the request head did not arrive within {self.header_timeout:g}s (--header-timeout)")
            elif conn.state == BODY:
                self._refuse(conn, 408, "Request Timeout",
                             f"the request body did not arrive within {self.body_timeout:g}s (--body-timeout)")
            else:  # idle past --keep-alive, or done lingering
                self._close(conn)

    def _stop(self) -> None:
        """Graceful stop: no new connections; requests read or in flight are answered (with Connection: close),
        idle connections get a moment for a request already on its way."""
        for listener in self.sockets:
            if self.accepting:
                self.poller.unregister(listener)
        self.accepting = False
        now = time.monotonic()
        for conn in self.conns.values():
            if conn.state == IDLE:
                conn.deadline = min(conn.deadline, now + STOP_KEEPALIVE_SECONDS)
        limit = now + self.cfg.graceful_timeout
        while self.conns and time.monotonic() < limit:
            self.notify()
            self.board.beat(int(time.monotonic() * 1000))  # draining is not hanging
            self._dispatch_events(SWEEP_SECONDS)
            self._sweep(time.monotonic())
        for conn in list(self.conns.values()):
            util.close(conn.sock)
        for _ in range(self.cfg.threads):
            self.jobs.put(None)
