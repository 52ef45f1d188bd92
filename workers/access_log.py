"""One access line per request, in the replica's log format (text or JSON, as `replica.logs` writes them), on
stderr: built as one string and written with one `write(2)` (atomic for a line under PIPE_BUF, so lines from
request threads never interleave), without a logging record and Formatter per request."""

from __future__ import annotations

import json
import os
import time


class AccessLog:
    def __init__(self, fmt: str, enabled: bool, fd: int = 2):
        self.enabled = enabled
        self.json = fmt == "json"
        self.fd = fd
        self.pid = os.getpid()
        self._second = -1
        self._stamp = ""

    def _time(self) -> tuple[str, int]:
        now = time.time()
        second = int(now)
        if second != self._second:  # the date part is formatted once a second
            self._second = second
            self._stamp = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) if self.json
                           else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
        return self._stamp, int((now - second) * 1000)

    def line(self, client, request_line: str, status: int, sent: int, seconds: float, rid: str = "-") -> None:
        """`client` is the peer's (host, port) or a path; `seconds` how long the request took; `rid` the
        request id the answer carried."""
        if not self.enabled:
            return
        host = client[0] if isinstance(client, tuple) else str(client or "-")
        message = f'{host} "{request_line}" {status} {sent} bytes {int(seconds * 1000)}ms {rid}'
        stamp, ms = self._time()
        if self.json:
            text = json.dumps({"time": f"{stamp}.{ms:03d}Z", "level": "info", "process": "access", "pid": self.pid,
                               "logger": "access", "message": message}) + "\n"
        else:
            text = f"{stamp},{ms:03d} INFO [access {self.pid}] access: {message}\n"
        try:
            os.write(self.fd, text.encode("utf-8", "replace"))
        except OSError:
            pass  # a log that cannot be written must not fail the request
