"""A TCP proxy on 127.0.0.1 that misbehaves on purpose, in front of a real server (SeaweedFS's S3 port).

The tests point a replica at the proxy (AWS_ENDPOINT_URL) to reproduce a slow S3 path: a large response
trickles at a set rate, stops mid-body, or the proxy accepts connections and never answers. Small responses
(listing pages, small models) pass at full speed unless the proxy hangs, so only the big object is slow.
A response is measured from the last bytes the client sent on its connection (its request), so a kept-alive
connection's earlier answers do not count.
"""

from __future__ import annotations

import socket
import threading
import time


class ThrottleProxy:
    """`mode` is read per chunk, so a test can change it while connections are open:

    - "pass": forward everything at full speed;
    - "trickle": a response's bytes past `free_bytes` go at `rate` bytes a second;
    - "stall": a response's bytes past `free_bytes` are never sent (the connection stays open);
    - "hang": new connections are accepted and never answered (nothing is forwarded either way).
    """

    def __init__(self, target_port: int, *, mode: str = "pass", rate: int = 30_000, free_bytes: int = 64 << 10):
        self.target_port = target_port
        self.mode = mode
        self.rate = rate
        self.free_bytes = free_bytes
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # accept() wakes to see close()
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.stalled = threading.Event()  # set once a response was cut off in "stall" mode
        self.slowed = threading.Event()  # set once a response was slowed down in "trickle" mode
        self._thread = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ThrottleProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting and close every connection, so no thread of the proxy outlives the test."""
        self._stop.set()
        self._listener.close()
        with self._lock:
            socks, self._sockets = list(self._sockets), set()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self._thread.join(timeout=5)

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            if self._stop.is_set():
                s.close()
                raise OSError("proxy closed")
            self._sockets.add(s)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                self._track(client)
            except OSError:
                return
            if self.mode == "hang":
                continue  # accepted, never answered: held open until close()
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                server.settimeout(None)
                self._track(server)
            except OSError:
                client.close()
                continue
            state = {"response": 0}  # bytes of the current response sent so far
            threading.Thread(target=self._upstream, args=(client, server, state), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, state), daemon=True).start()

    def _upstream(self, client: socket.socket, server: socket.socket, state: dict) -> None:
        """Client -> server, as is; every request starts a new response count."""
        try:
            while data := client.recv(65536):
                state["response"] = 0
                server.sendall(data)
        except OSError:
            pass
        finally:
            _close(server)

    def _downstream(self, server: socket.socket, client: socket.socket, state: dict) -> None:
        """Server -> client, slowed or cut off once a response passes `free_bytes`."""
        try:
            while data := server.recv(4096):
                while data and not self._stop.is_set():
                    free = self.free_bytes - state["response"]
                    if free > 0 or self.mode == "pass":
                        n = len(data) if self.mode == "pass" else min(len(data), free)
                    elif self.mode == "stall":
                        self.stalled.set()
                        self._stop.wait(0.1)  # never sends the rest; ends with the proxy
                        continue
                    else:  # trickle: 1/20 s worth of bytes at a time
                        self.slowed.set()
                        n = min(len(data), max(1, self.rate // 20))
                        time.sleep(n / self.rate)
                    client.sendall(data[:n])
                    state["response"] += n
                    data = data[n:]
        except OSError:
            pass
        finally:
            _close(client)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
