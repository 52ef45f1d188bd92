"""The replica's gunicorn worker class: one event loop owns every connection, parses each request once (llhttp,
`workers.http_parse`) with deadlines and bounds, and runs the WSGI app on it.

A slow or idle peer costs a file descriptor and a few bytes, never a thread:

- a fresh connection must send its request head within `--header-timeout` seconds, a keep-alive connection
  waiting for its next request is closed after `--keep-alive` seconds;
- a request's head must arrive within `--header-timeout` seconds of its first byte, its body within
  `--body-timeout` seconds of the end of its head; past either, 408 and the connection is closed;
- a response the peer does not read within `--body-timeout` seconds is abandoned (socket sends time out);
- at `--worker-connections`, the longest-idle connection is closed to take a new one (as nginx does), so held
  connections never lock new clients out;
- request bodies in memory are bounded per worker (`--max-buffered-bytes`): past it the loop stops reading
  bodies (back-pressure on the peers) except the oldest one still arriving, until requests are served;
- every malformed request answers 400 (413, 414, 417, 431 where they fit) in JSON and the connection is closed;
- a request still in the predictor after `--request-timeout` seconds is answered 504 by the loop and its thread
  left to finish (a Python thread cannot be stopped); a worker with half its request threads stuck so (all of
  them with one thread) retires: it asks the master for a replacement, stops taking connections once that one
  is ready, drains the requests that can still finish, and exits, leaving its siblings and the master alone.
- a worker whose resident memory passes `--worker-max-rss` retires the same way, except that it takes no new
  connection or request from the moment it notices (each could grow it further): they wait in the listen
  queue for the replacement.

With `threads_per_process: 1` and nothing to shed, the request runs on the loop's own thread (no hand-off; a
heartbeat thread keeps the worker's liveness while a predictor runs); otherwise it goes to `--threads`
request threads and the loop goes on reading, shedding and timing out the other connections.

Keep-alive connections spread over the worker processes through the shared board (`workers.board`): a worker
accepts only while it holds no more connections than the least loaded live worker. A prediction (the app's
predict route, as the app itself routes the parsed path) is admitted only while fewer than
`autoscaling.max_replica_concurrency` requests are in flight in the whole replica; above it the loop answers
503 with Retry-After at once.

Settings come from the environment the supervisor gives gunicorn (REPLICA_HEADER_TIMEOUT, REPLICA_BODY_TIMEOUT,
REPLICA_MAX_REQUEST_SIZE, REPLICA_MAX_BUFFERED_BYTES, REPLICA_MAX_REPLICA_CONCURRENCY, REPLICA_ACCESS_LOG,
REPLICA_LOG_FORMAT), gunicorn's own flags for the rest (`--keep-alive`, `--threads`, `--worker-connections`,
`--graceful-timeout`, `--limit-request-*`). HTTP/1.x only, without TLS (a TLS-terminating proxy or load
balancer sits in front when one is needed).
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import socket
import struct
import threading
import time
from collections import deque

from gunicorn.workers import base

from replica.quantity import format_bytes
from workers import http_exchange, memory
from workers.access_log import AccessLog
from workers.board import Board, may_accept, over_limit, should_retire
from workers.connections import BODY, BUSY, HEAD, IDLE, LINGER, Conn
from workers.http_parse import BadRequest, Limits, Request
from workers.request_pool import RequestPool

READ_SIZE = 256 * 1024
LINGER_SECONDS = 2.0  # how long a closing connection may take to send its FIN after ours
SWEEP_SECONDS = 0.1  # deadline resolution
BALANCE_SECONDS = 0.01  # how often the other workers' counts are read while nothing else changes
BEAT_SECONDS = 0.25
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
STOP_GRACE_SECONDS = 1.0  # a stopping worker still answers the first request of a connection it accepted
REPLACEMENT_WAIT_SECONDS = 120.0  # a retiring worker waits this long at most for its replacement to be ready
MEMORY_CHECK_SECONDS = 0.02  # at most this often a worker compares its resident memory with --worker-max-rss


class Superseded(Exception):
    """The request's answer was already given by the loop (504 past --request-timeout): nothing is sent."""


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name) or default)


class FrontWorker(base.Worker):
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
        max_body = int(os.environ.get("REPLICA_MAX_REQUEST_SIZE") or 64 << 20)
        self.body_budget = int(os.environ.get("REPLICA_MAX_BUFFERED_BYTES") or 256 << 20)
        self.max_in_flight = int(os.environ.get("REPLICA_MAX_REPLICA_CONCURRENCY") or 1024)
        self.request_timeout = _env_float("REPLICA_REQUEST_TIMEOUT", 300.0)
        self.max_rss = int(os.environ.get("REPLICA_WORKER_MAX_RSS") or 0)  # bytes; 0: no bound
        self.limits = Limits(self.cfg.limit_request_line, self.cfg.limit_request_fields,
                             self.cfg.limit_request_field_size, max_body)
        if type(self).board is None:  # run without check_config (a bare worker in a test)
            type(self).board = Board.create(self.cfg.worker_tmp_dir)
        self.board.claim()
        self.poller = selectors.DefaultSelector()
        self.conns: dict[int, Conn] = {}
        self.idle: dict[int, Conn] = {}  # IDLE connections, longest idle first: the first to give way
        self.paused: dict[int, Conn] = {}  # BODY connections waiting for the body budget
        self.body_leader: Conn | None = None  # the one body that keeps arriving while the budget is spent
        self.buffered = 0  # request body bytes in memory, all connections together
        self.n_open = 0  # connections not lingering: what the board compares between workers
        self.in_flight = 0
        self.flight_lock = threading.Lock()  # the loop and request threads both change this worker's count
        self.accepting = False
        self.inline = self.cfg.threads == 1 and self.max_in_flight > self.cfg.workers  # nothing to shed
        self.inline_since: float | None = None
        self.inline_conn: Conn | None = None
        self.claim_lock = threading.Lock()  # who answers a request past its deadline: its thread, or the loop
        self.stuck: dict[int, tuple[Conn, float]] = {}  # abandoned requests whose threads have not returned
        self.retiring_since: float | None = None
        self.taking = True  # False once retiring for memory: nothing new until the replacement takes over
        self.next_memory_check = 0.0
        self.pool = RequestPool(self.cfg.threads, self._serve_job)
        self.done: deque = deque()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.servers = {}
        for listener in self.sockets:
            listener.setblocking(False)
            self.servers[listener.fileno()] = http_exchange.ServerInfo(listener.getsockname(), self.cfg.workers > 1)
        from workers import metrics  # after fork: prometheus' multiprocess files are per process

        self.metrics = metrics
        self.access = AccessLog(os.environ.get("REPLICA_LOG_FORMAT", "text"),
                                os.environ.get("REPLICA_ACCESS_LOG") != "0")
        super().init_process()

    def run(self) -> None:
        # The application may say when it can serve (the replica's: once its models are loaded), so that a
        # worker still starting leaves new connections to its ready siblings, and which requests are
        # predictions (the ones max_replica_concurrency counts).
        self.app_ready = getattr(self.wsgi, "replica_ready", None)
        self.is_prediction = getattr(self.wsgi, "replica_is_prediction",
                                     lambda method, path: method == "POST" and path in ("/", "/predict"))
        self.wsgi.replica_board = self.board  # /healthz reads every worker's heartbeat from it
        self.wsgi.replica_stuck = self.stuck_requests  # and what this one's threads are stuck on
        self.poller.register(self.wake_r, selectors.EVENT_READ, (self._on_wake, None))
        self.poller.register(self.PIPE[0], selectors.EVENT_READ, (self._on_signal_pipe, None))
        if self.inline:
            threading.Thread(target=self._beat_while_serving, name="heartbeat", daemon=True).start()
        else:
            self.pool.start()
        now = time.monotonic()
        next_beat = next_sweep = next_balance = now
        while self.alive:
            now = time.monotonic()
            if now >= next_beat:
                self._beat(now)
                next_beat = now + BEAT_SECONDS
                self._check_memory(now)
                if self.retiring_since is not None and self._replaced(now):
                    self.alive = False
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

    @property
    def open_for_more(self) -> bool:
        """Whether this worker takes new connections and new requests on its kept ones: not once it stops, nor
        once it retires for its memory."""
        return self.alive and self.taking

    def _beat(self, now: float) -> None:
        self.notify()
        self.board.beat(int(now * 1000))

    def _beat_while_serving(self) -> None:
        """The loop beats by itself, except while it runs a request: then this thread does, so a slow predictor
        is not taken for a hung worker (a loop stuck anywhere else stops beating and the worker is replaced).

        A request past --request-timeout is answered 504 from here; the worker, whose one thread is stuck,
        asks for its replacement and exits once that one is ready."""
        while True:
            time.sleep(BEAT_SECONDS)
            since, conn = self.inline_since, self.inline_conn
            if since is None:
                continue
            now = time.monotonic()
            self._beat(now)
            if conn is not None and now >= conn.due and self._abandon(conn, since, now):
                self._retire(now, self._stuck_reason(1))
            if self.retiring_since is not None and self._replaced(now):
                self.log.error("exiting: its request thread is stuck in the predictor; the replacement serves")
                os._exit(0)

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
        ready = (self.app_ready is None or self.app_ready()) and self.retiring_since is None
        self.board.set_counts(self.n_open, self.in_flight, ready)
        room = self.n_open < self.cfg.worker_connections or bool(self.idle)
        want = self.open_for_more and room and may_accept(self.n_open, ready, self.board.others(int(now * 1000)))
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
        if self.n_open >= self.cfg.worker_connections and self.idle:
            self._close(next(iter(self.idle.values())))  # the longest idle gives way
        # A blocking socket whose sends time out in the kernel (SO_SNDTIMEO): a request's answer waits at most
        # the body timeout for a peer that does not read it. The loop itself only reads what select() said is
        # there and writes its own short answers with MSG_DONTWAIT.
        sock.setblocking(True)
        seconds = int(self.body_timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", seconds, int((self.body_timeout - seconds) * 1e6)))
        conn = Conn(sock, client, self.servers[listener.fileno()], self.limits)
        self.conns[conn.fd] = conn
        self.n_open += 1
        now = time.monotonic()
        self._to_idle(conn, now + self.header_timeout)
        self._balance(now)

    # -- the connection's place in the loop ----------------------------------------------------------------------
    def _register(self, conn: Conn) -> None:
        if not conn.registered:
            self.poller.register(conn.fd, selectors.EVENT_READ, (self._on_readable, conn))
            conn.registered = True

    def _unregister(self, conn: Conn) -> None:
        if conn.registered:
            self.poller.unregister(conn.fd)
            conn.registered = False

    def _to_idle(self, conn: Conn, deadline: float) -> None:
        conn.state, conn.deadline = IDLE, deadline
        self.idle[conn.fd] = conn
        self._register(conn)

    # -- reading -------------------------------------------------------------------------------------------------
    def _on_readable(self, _fileobj, conn: Conn) -> None:
        try:
            data = conn.sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if conn.state == LINGER:
            if not data:
                self._close(conn)  # the peer's FIN: done
            return  # drained and dropped
        if not data:  # the peer sent all it will: a request still incomplete never will be
            conn.eof = True
            self._unregister(conn)
            if conn.parser.ready or conn.error:
                self._next_request(conn, time.monotonic())
            else:
                self._close(conn)
            return
        now = time.monotonic()
        if conn.state == IDLE:
            del self.idle[conn.fd]
            conn.state, conn.deadline = HEAD, now + self.header_timeout
        parser = conn.parser
        before = parser.buffered
        try:
            parser.feed(data)
        except BadRequest as e:
            conn.error = e
        self.buffered += parser.buffered - before
        if conn.error is None and not parser.ready:
            if parser.in_body:
                if conn.state == HEAD:
                    conn.state, conn.deadline = BODY, now + self.body_timeout
                if parser.continue_wanted:
                    parser.continue_wanted = False
                    self._write_now(conn, CONTINUE)
                self._hold_back(conn)
            return
        self._unregister(conn)
        self._next_request(conn, now)

    def _hold_back(self, conn: Conn) -> None:
        """Back-pressure: past the body budget, bodies wait in the peers' send buffers, not in this worker; one
        (the oldest still arriving) goes on, so a request always completes and frees its share."""
        if self.buffered < self.body_budget:
            return
        leader = self.body_leader
        if leader is None or leader.state != BODY or leader.fd not in self.conns:
            self.body_leader = conn
            return
        if conn is not leader:
            self._unregister(conn)
            conn.paused, conn.deadline = True, float("inf")  # the wait is ours, not the peer's
            self.paused[conn.fd] = conn

    def _release(self, conn: Conn, n: int) -> None:
        """`n` of the connection's body bytes are out of memory (served, shed or dropped)."""
        n = min(n, conn.parser.buffered)
        conn.parser.buffered -= n
        self.buffered -= n
        if self.paused and self.buffered < self.body_budget:
            now = time.monotonic()
            for conn in self.paused.values():
                conn.paused, conn.deadline = False, now + self.body_timeout
                self._register(conn)
            self.paused.clear()

    def _next_request(self, conn: Conn, now: float) -> None:
        """Serve the connection's next complete request, or answer its parse error, or wait for more."""
        parser = conn.parser
        if parser.ready:
            self._start(conn, parser.ready.popleft(), now)
        elif conn.error is not None:
            e = conn.error
            self._refuse(conn, e.status, e.message)
        elif conn.eof or not self.open_for_more:
            self._linger(conn)
        elif parser.started:  # the next request's first bytes came with the last one
            conn.state = BODY if parser.in_body else HEAD
            conn.deadline = now + (self.body_timeout if parser.in_body else self.header_timeout)
            self._register(conn)
        else:
            self._to_idle(conn, now + self.cfg.keepalive)

    def _start(self, conn: Conn, req: Request, now: float) -> None:
        conn.state, conn.fresh = BUSY, False
        path = http_exchange.path_info(req.path)
        if self.is_prediction(req.method, path) and over_limit(
                self.board.total_in_flight(int(now * 1000)), self.max_in_flight):
            self._release(conn, req.body_size)
            self._shed(conn, req)
            return
        self._count(conn, 1)
        conn.request_line = req.request_line
        health = path == "/healthz" and req.method in ("GET", "HEAD")
        conn.due = float("inf") if health else now + self.request_timeout
        if self.inline or health:
            # /healthz on the loop, never queued behind request threads that user code holds: it says whether
            # this replica is alive, and a predictor stuck in every thread is not a dead replica.
            self.inline_conn = conn
            self.inline_since = now
            try:
                keep = self._serve(conn, req)
            finally:
                self.inline_since = self.inline_conn = None
            self._finish(conn, req, keep)
        else:
            self.pool.put((conn, req))

    def _count(self, conn: Conn, delta: int) -> None:
        """This worker's requests in flight, on the shared board: +1 when one starts, -1 just before its answer
        leaves, so a client that has its answer never finds it still counted."""
        if conn.counted == (delta > 0):
            return
        conn.counted = delta > 0
        with self.flight_lock:
            self.in_flight += delta
            self.board.add_in_flight(delta)

    def _finish(self, conn: Conn, req: Request, keep: bool | None) -> None:
        """After a request, on the loop: the connection goes on to its next request, or out."""
        self._check_memory(time.monotonic())
        self._count(conn, -1)
        self._release(conn, req.body_size)
        conn.due = float("inf")
        if conn.abandoned:  # answered 504 long ago; its thread is free again
            self.stuck.pop(conn.fd, None)
            self._publish_stuck()
            self._close(conn)
            return
        if conn.fd not in self.conns:
            return
        now = time.monotonic()
        if keep is None:
            self._close(conn)  # the peer is gone
        elif keep and (self.open_for_more or conn.parser.ready):
            self._next_request(conn, now)  # a request already sent to a stopping worker is answered
        else:
            self._linger(conn)

    # -- serving ---------------------------------------------------------------------------------------------------
    def _serve(self, conn: Conn, req: Request) -> bool | None:
        """Run the app on one request; True when the connection may carry another, False when it closes after
        the answer, None when the peer is gone."""
        started = time.perf_counter()
        self.nr += 1
        if self.nr >= self.max_requests and self.alive:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        # Requests pipelined before the peer's FIN are all answered, the last saying the connection closes;
        # those before a malformed one too, and the 400 that follows them says so.
        last = conn.eof and conn.error is None and not conn.parser.ready
        may_keep = bool(self.cfg.keepalive) and self.open_for_more and not last
        try:
            ex = http_exchange.run(self.wsgi, req, conn.server, conn.client, conn.sock, may_keep,
                                   before_send=lambda: self._claim(conn))
        except Superseded:
            self.log.warning("the predictor answered %s after %s had its 504 (--request-timeout %gs)",
                             req.request_line, conn.client, self.request_timeout)
            return None
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EAGAIN, errno.ETIMEDOUT, None):
                self.log.warning("cannot answer %s: %s", conn.client, e)
            return None
        except Exception:  # noqa: BLE001 - the app itself answers its errors; this is the front's own failure
            self.log.exception("Error handling request %s", req.request_line)
            self._write_now(conn, http_exchange.refusal(500, "internal error in the replica's front; see its log",
                                                        close=True))
            return False
        self.access.line(conn.client, req.request_line, ex.status, ex.sent, time.perf_counter() - started,
                         ex.request_id)
        return ex.keep_alive

    # -- requests past --request-timeout -------------------------------------------------------------------------
    def _claim(self, conn: Conn) -> None:
        """Just before a request's answer leaves its thread: it is this thread's to send, unless the loop gave
        the 504 already (Superseded)."""
        with self.claim_lock:
            if conn.abandoned:
                raise Superseded()
            conn.due = float("inf")
        self._count(conn, -1)

    def _take_over(self, conn: Conn) -> bool:
        """The loop's side of the claim: True when the request is still unanswered, and now the loop's."""
        with self.claim_lock:
            if conn.abandoned or conn.due == float("inf"):
                return False
            conn.abandoned = True
            return True

    def _abandon(self, conn: Conn, started: float, now: float) -> bool:
        """Answer a request past its deadline with 504 and count its thread as stuck, unless its thread is
        answering it already; True when it was abandoned."""
        if not self._take_over(conn):
            return False
        self._answer_abandoned(conn, now - started)
        self.stuck[conn.fd] = (conn, started)
        self._publish_stuck()
        return True

    def _answer_abandoned(self, conn: Conn, seconds: float) -> None:
        message = (f"the predictor did not answer within {self.request_timeout:g} s (--request-timeout); "
                   "the request is abandoned")
        self._count(conn, -1)
        self._write_now(conn, http_exchange.refusal(504, message, close=True))
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)  # the peer is done; the descriptor closes when the thread returns
        except OSError:
            pass
        self.access.line(conn.client, conn.request_line, 504, 0, seconds)
        self.log.error("%s from %s still in the predictor after %.0fs (--request-timeout): answered 504, its "
                       "thread is left to finish", conn.request_line, conn.client, seconds)

    def _abandon_overdue(self, now: float) -> None:
        for conn in [c for c in self.conns.values() if c.state == BUSY and c.due <= now and not c.abandoned]:
            self._abandon(conn, conn.due - self.request_timeout, now)
        if self.stuck and should_retire(len(self.stuck), self.cfg.threads):
            self._retire(now, self._stuck_reason(len(self.stuck)))

    def _stuck_reason(self, stuck: int) -> str:
        return (f"{stuck} of its {self.cfg.threads} request threads are stuck in the predictor past "
                f"--request-timeout {self.request_timeout:g}s")

    def _check_memory(self, now: float) -> None:
        """Recycle this worker once its resident memory passes --worker-max-rss (a predictor that leaks, or
        memory a framework keeps after its models are unloaded). Checked after requests (at most every
        MEMORY_CHECK_SECONDS) and on the heartbeat, so a fast leak overshoots by what one request adds.

        Unlike a worker with stuck threads, this one takes nothing new at once: every request it serves may
        grow it further, so new connections wait in the listen queue for the replacement, and its kept
        connections close after their current request."""
        if not self.max_rss or self.retiring_since is not None or now < self.next_memory_check:
            return
        self.next_memory_check = now + MEMORY_CHECK_SECONDS
        used = memory.rss()
        if used <= self.max_rss:
            return
        self._retire(now, f"its resident memory ({format_bytes(used)}) passed --worker-max-rss "
                          f"({format_bytes(self.max_rss)})", logging.WARNING)
        self.taking = False
        self._balance(now)
        for conn in list(self.idle.values()):
            if conn.fresh:  # accepted, its request on its way: answered
                conn.deadline = min(conn.deadline, now + STOP_GRACE_SECONDS)
            else:
                self._close(conn)

    def _publish_stuck(self) -> None:
        self.board.set_stuck(len(self.stuck), self.retiring_since is not None)

    def _retire(self, now: float, why: str, level: int = logging.ERROR) -> None:
        """This worker should be replaced (threads stuck in user code, or past --worker-max-rss): have the
        master start a replacement (SIGTTIN; it counts this worker out again when it exits), take no more
        connections, and leave once the replacement is ready, after the requests it holds are answered."""
        if self.retiring_since is not None:
            return
        self.retiring_since = now
        self._publish_stuck()
        self.board.set_counts(self.n_open, self.in_flight, False)  # the siblings take the new connections
        self.log.log(level, "worker %s retires: %s; a replacement is starting", self.pid, why)
        try:
            os.kill(self.ppid, signal.SIGTTIN)
        except OSError as e:
            self.log.warning("cannot ask the master for a replacement: %s", e)

    def _replaced(self, now: float) -> bool:
        """A retiring worker may go once another worker is ready (or it waited long enough for one)."""
        ready_sibling = any(r for _, r in self.board.others(int(now * 1000)))
        return ready_sibling or now - self.retiring_since > REPLACEMENT_WAIT_SECONDS

    def stuck_requests(self) -> list[dict]:
        """This worker's requests past --request-timeout whose threads have not returned: for /healthz."""
        now = time.monotonic()
        return [{"request": c.request_line, "seconds": round(now - since)} for c, since in self.stuck.values()]

    def _serve_job(self, job: tuple[Conn, Request]) -> None:
        """One request on a request thread; the loop hears back about it, whatever happened."""
        conn, req = job
        keep = None
        try:
            keep = self._serve(conn, req)
        except BaseException:  # noqa: BLE001 - the loop must hear back about every connection
            self.log.exception("Error serving a request")
        self.done.append((conn, req, keep))
        try:
            os.write(self.wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _on_wake(self, _fileobj, _conn) -> None:
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:
            pass
        while self.done:
            self._finish(*self.done.popleft())

    def _on_signal_pipe(self, fileobj, _conn) -> None:
        try:
            os.read(fileobj, 4096)
        except BlockingIOError:
            pass

    # -- the loop's own answers ------------------------------------------------------------------------------------
    def _write_now(self, conn: Conn, data: bytes) -> bool:
        """Write from the loop without waiting; False when the peer's window could not take it all."""
        try:
            return conn.sock.send(data, socket.MSG_DONTWAIT) == len(data)
        except OSError:
            return False

    def _refuse(self, conn: Conn, status: int, message: str) -> None:
        self._write_now(conn, http_exchange.refusal(status, message, close=True))
        self.access.line(conn.client, "-", status, 0, 0.0)
        self._linger(conn)

    def _shed(self, conn: Conn, req: Request) -> None:
        message = (f"{self.max_in_flight} requests already in flight on this replica "
                   "(autoscaling.max_replica_concurrency); retry shortly")
        self.metrics.count_shed()
        keep = req.keep_alive and self.open_for_more and not conn.eof
        sent = self._write_now(conn, http_exchange.refusal(503, message, close=not keep, retry_after=1))
        self.access.line(conn.client, req.request_line, 503, 0, 0.0)
        if sent and keep:
            self._next_request(conn, time.monotonic())
        else:
            self._linger(conn)

    # -- closing: one way out from every state ---------------------------------------------------------------------
    def _leave_state(self, conn: Conn) -> None:
        self.idle.pop(conn.fd, None)
        if self.paused.pop(conn.fd, None) is not None:
            conn.paused = False
        if conn.state != LINGER:
            self.n_open -= 1

    def _linger(self, conn: Conn) -> None:
        """Half-close and let the peer's FIN (or the linger deadline) finish it, so unread request bytes do
        not turn the close into a reset that cuts the last response short."""
        if conn.state == LINGER or conn.fd not in self.conns:
            return
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        self._leave_state(conn)
        self._release(conn, conn.parser.buffered)
        conn.parser.ready.clear()
        conn.state, conn.deadline = LINGER, time.monotonic() + LINGER_SECONDS
        self._register(conn)
        self._balance(time.monotonic())

    def _close(self, conn: Conn) -> None:
        if self.conns.pop(conn.fd, None) is None:
            return
        self._unregister(conn)
        self._leave_state(conn)
        self._release(conn, conn.parser.buffered)
        conn.parser.ready.clear()
        conn.state = LINGER
        try:
            conn.sock.close()
        except OSError:
            pass

    def _sweep(self, now: float) -> None:
        self._abandon_overdue(now)
        for conn in [c for c in self.conns.values() if c.state != BUSY and c.deadline <= now]:
            if conn.state == HEAD:
                self._refuse(conn, 408, f"the request head did not arrive within {self.header_timeout:g}s "
                                        "(--header-timeout)")
            elif conn.state == BODY:
                self._refuse(conn, 408, f"the request body did not arrive within {self.body_timeout:g}s "
                                        "(--body-timeout)")
            else:  # idle past its deadline, or done lingering
                self._close(conn)

    def _stop(self) -> None:
        """Graceful stop: no new connections; keep-alive connections between requests are closed at once, a
        connection accepted without its request yet gets a moment for it; requests being read or served are
        answered (with Connection: close) until `--graceful-timeout`. The app's other server (gRPC, its
        `replica_stop(grace)`) drains alongside, within the same deadline."""
        stop_other = getattr(self.wsgi, "replica_stop", None)
        other_stopped = stop_other(self.cfg.graceful_timeout) if stop_other is not None else None
        for listener in self.sockets:
            if self.accepting:
                self.poller.unregister(listener)
        self.accepting = False
        now = time.monotonic()
        for conn in list(self.idle.values()):
            if conn.fresh:
                conn.deadline = min(conn.deadline, now + STOP_GRACE_SECONDS)
            else:
                self._close(conn)
        limit = now + self.cfg.graceful_timeout
        while time.monotonic() < limit and (any((c.state in (HEAD, BODY, BUSY) and not c.abandoned)
                                                or (c.state == IDLE and c.fresh) for c in self.conns.values())
                                            or (other_stopped is not None and not other_stopped.is_set())):
            self._beat(time.monotonic())  # draining is not hanging
            self._dispatch_events(SWEEP_SECONDS)
            self._sweep(time.monotonic())
        for conn in list(self.conns.values()):
            conn.sock.close()
        self.pool.stop()
