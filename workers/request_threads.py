"""The request-thread half of the front worker: each thread takes a complete request from the event loop, runs
the WSGI app on it, and hands the connection back (kept alive or not) through the loop's wake-up pipe."""

from __future__ import annotations

import errno
import os
from datetime import datetime

from gunicorn import http
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from workers.connections import CoalescedSocket, Conn


class RequestThreads:
    """Mixed into FrontWorker, which provides `jobs` (the queue the loop fills), `done` and `wake_w` (how a
    finished request goes back to the loop), and gunicorn's worker attributes (`cfg`, `log`, `wsgi`, `nr`,
    `max_requests`, `alive`, `handle_error`)."""

    def _serve_jobs(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            conn, data, close_after = job
            keep = False
            try:
                keep = self._serve(conn, data) and not close_after
            except BaseException:  # noqa: BLE001 - the loop must hear back about every connection
                self.log.exception("Error serving a request")
            self.done.append((conn, keep))
            try:
                os.write(self.wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    def _serve(self, conn: Conn, data: bytes) -> bool:
        req = None
        try:
            req = next(RequestParser(self.cfg, [data], conn.client))
            req._expected_100_continue = False  # the loop answered Expect: 100-continue, once
            return self._handle_request(req, conn)
        except http.errors.NoMoreData as e:
            self.log.debug("Ignored premature client disconnection. %s", e)
        except StopIteration as e:
            self.log.debug("Closing connection. %s", e)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, None):
                self.log.exception("Socket error processing request.")
        except Exception as e:  # noqa: BLE001 - a parse error or the app's: gunicorn answers 400 or 500
            self.handle_error(req, conn.sock, conn.client, e)
        return False

    def _handle_request(self, req, conn: Conn) -> bool:
        environ: dict = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            out = CoalescedSocket(conn.sock)
            resp, environ = wsgi.create(req, out, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
                out.flush()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close()
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp is not None and resp.headers_sent:
                self.log.exception("Error handling request")
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:  # noqa: BLE001
                self.log.exception("Exception in post_request hook")

