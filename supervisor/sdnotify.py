"""systemd's notify protocol (sd_notify): a datagram of `KEY=value` lines to the socket in $NOTIFY_SOCKET.

`Type=notify` units learn from READY=1 that the replica listens, and with `WatchdogSec=` they restart a
replica that stops sending WATCHDOG=1. Outside systemd (no NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # an abstract socket
            address = "\0" + address[1:]
        self.address = address or None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # Pinged twice per period, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = int(usec) / 2e6 if wanted and int(usec) > 0 else None

    def notify(self, message: str) -> None:
        if self.address is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            try:
                s.connect(self.address)
                s.sendall(message.encode())
            except OSError:
                pass  # systemd gone or restarting: nothing to tell
