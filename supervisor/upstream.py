"""Upstreams: where models come from. One interface for S3 and for a local directory.

An upstream answers two questions: what is under the root now (one paginated listing, never one request
per model or per file), and give me this file as listed. A file whose tag no longer matches the listing
raises `ChangedDuringDownload`, so a version that changes while it downloads is fetched again instead of
being served mixed. A version's files download at once (`fetch_files`), and an S3 file in parallel ranged
parts (supervisor/ranged.py), all under one process-wide bound on requests in flight.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import stat
import threading
from pathlib import Path
from typing import Callable, Generator, Protocol

from replica.disktree import FILE_MODE, safe_relpath
from replica.layout import ObjectInfo
from supervisor.download_types import (ChangedDuringDownload, LocalDiskError, Progress, Stopped, UpstreamError,
                                       Written, disk_error)
from supervisor import ranged
from supervisor.part_pool import lower_priority
from supervisor.s3_client import make_s3_client

# The download vocabulary lives in supervisor.download_types; it is re-exported here, where the upstreams are.
__all__ = ["ChangedDuringDownload", "LocalDiskError", "LocalUpstream", "Progress", "S3Upstream", "Stopped", "Upstream",
           "UpstreamError", "Written", "fetch_files", "open_upstream"]

log = logging.getLogger(__name__)

CHUNK = 1 << 20
S3_CHUNK = 64 << 10  # a socket read: at a trickle of 20 KB/s a stopping replica still ends it within seconds
S3_READ = 1 << 20  # the most one read of a ranged part returns (it returns what has arrived, see _as_it_arrives)


def _write_chunks(chunks, dest: Path, progress: Progress | None) -> str:
    """Write an iterable of byte chunks to `dest`, reporting each; return the sha256 of what was written. A
    write error names the local disk."""
    digest = hashlib.sha256()
    try:
        f = os.fdopen(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE), "wb")
    except OSError as e:
        raise disk_error(dest, e) from e
    with f:
        for chunk in chunks:
            try:
                f.write(chunk)
            except OSError as e:
                raise disk_error(dest, e) from e
            digest.update(chunk)
            if progress is not None:
                progress(len(chunk))
    return digest.hexdigest()


class Upstream(Protocol):
    url: str

    def list(self) -> list[ObjectInfo]:
        """Every file under the root, keys relative to it."""

    def fetch(self, obj: ObjectInfo, dest: Path, progress: Progress | None = None) -> Written:
        """Copy one listed file to `dest`, calling `progress` per chunk (from any thread: S3 fetches parts on
        several); return its size and digest.

        Raises ChangedDuringDownload, UpstreamError (reading), LocalDiskError (writing) or Stopped."""


class _Cancelled(Exception):
    """Another file of the version failed first: this one ends at its next chunk."""


def fetch_files(upstream: Upstream, files: list[tuple[ObjectInfo, Path]],
                progress: Progress | None = None) -> list[Written]:
    """Copy a version's listed files, each to its path, several at once; what each wrote, in order.

    One after the other, a version of many files waits for each file's first byte in turn and a small file
    leaves the part pool idle; so up to PARTS_IN_FLIGHT files run at once, their parts sharing that one bound
    (supervisor/ranged.py). The first failure ends the other files at their next chunk, files not started
    yet never start, and it is raised once every file has ended, so nothing writes into the staging folder
    afterwards. A file that does not come out at its listed size changed upstream."""
    results: dict[int, Written] = {}
    failures: list[BaseException] = []  # the first one is raised
    lock = threading.Lock()
    pending = iter(range(len(files)))

    def guarded(nbytes: int) -> None:
        if failures:
            raise _Cancelled()
        if progress is not None:
            progress(nbytes)

    def work() -> None:
        lower_priority(ranged.DOWNLOAD_NICE)  # it hashes its files: background work, as their parts are
        while True:
            with lock:
                index = None if failures else next(pending, None)
            if index is None:
                return
            obj, dest = files[index]
            try:
                results[index] = upstream.fetch(obj, dest, guarded)
                if dest.stat().st_size != obj.size:
                    raise ChangedDuringDownload(obj.key)
            except BaseException as e:  # handed to the caller, which raises the first
                with lock:
                    failures.append(e)
                return

    threads = [threading.Thread(target=work, name="fetch-files", daemon=True)
               for _ in range(min(len(files), ranged.PARTS_IN_FLIGHT))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return [results[index] for index in range(len(files))]


class LocalUpstream:
    """A directory on this machine; the tag is the modification time, so an in-place rewrite is seen."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.url = str(self.root)
        self.list_calls = 0
        self.on_page: Callable[[], None] | None = None  # called per listing page: a long listing is alive
        self._skipped: set[tuple[str, str]] = set()

    def list(self) -> list[ObjectInfo]:
        """Every regular file under the root, symlinks included only while they stay inside it.

        A symlink out of the root (`1/passwd -> /etc/passwd`) is skipped, so nothing outside the models folder
        is ever copied and served. Symlinks to folders are not followed (a folder is listed where it is), so
        there is no loop to walk; a file symlink loop, or any entry that cannot be read, is skipped, so it
        affects only the model that holds it (which then shows the file missing) and never the whole listing.
        Each skipped path is logged once."""
        self.list_calls += 1
        if not self.root.is_dir():
            raise UpstreamError(f"{self.root} is not a directory")
        root_real = os.path.realpath(self.root)
        out: list[ObjectInfo] = []
        stack: list[tuple[str, str]] = [(str(self.root), "")]
        while stack:
            folder, rel = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as e:
                self._skip(rel or ".", e.strerror or str(e))
                continue
            for entry in entries:
                key = rel + entry.name
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if target != root_real and not target.startswith(root_real + os.sep):
                        self._skip(key, f"a symlink to {target}, outside {self.root}")
                        continue
                try:
                    st = os.stat(entry.path)
                except FileNotFoundError:
                    continue  # removed while listing
                except OSError as e:  # a symlink loop (ELOOP), a permission problem
                    self._skip(key, e.strerror or str(e))
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if entry.is_symlink():  # its folder is listed where it really is: no loop, no double
                        self._skip(key, "a symlink to a folder (only symlinks to files are followed)")
                    elif not entry.name.startswith("."):
                        stack.append((entry.path, key + "/"))
                elif stat.S_ISREG(st.st_mode):
                    out.append(ObjectInfo(key, st.st_size, str(st.st_mtime_ns)))
        return out

    def _skip(self, key: str, reason: str) -> None:
        if (key, reason) not in self._skipped:
            self._skipped.add((key, reason))
            log.warning("%s: skipping %s: %s", self.root, key, reason)

    def fetch(self, obj: ObjectInfo, dest: Path, progress: Progress | None = None) -> Written:
        src = self.root / safe_relpath(obj.key)
        real = os.path.realpath(src)
        root_real = os.path.realpath(self.root)
        if not real.startswith(root_real + os.sep):  # a symlink changed since the listing
            raise UpstreamError(f"{src} now leads outside {self.root} (to {real}); it is not copied",
                                "a file of the model now leads outside the model's folder; it is not copied")
        try:
            with open(src, "rb") as f:
                before = os.fstat(f.fileno())
                if (before.st_size, str(before.st_mtime_ns)) != (obj.size, obj.tag):
                    raise ChangedDuringDownload(obj.key)
                sha256 = _write_chunks(iter(lambda: f.read(CHUNK), b""), dest, progress)
            after = src.stat()
        except FileNotFoundError:
            raise ChangedDuringDownload(obj.key) from None
        except OSError as e:
            raise UpstreamError(f"cannot read {src}: {e.strerror}", f"a file of the model cannot be read ({e.strerror})") from e
        if (after.st_size, str(after.st_mtime_ns)) != (obj.size, obj.tag):
            raise ChangedDuringDownload(obj.key)
        return Written(obj.size, sha256)


class S3Upstream:
    """An S3 prefix. The client comes from the standard AWS chain; see `make_s3_client`."""

    def __init__(self, url: str, client, download_client=None):
        """`download_client` (default `client`) fetches files: its read timeout is the download's stall
        deadline, longer than the listing's, which must stay short for a hanging S3 to fail a pass soon."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        self.url = url
        self.bucket = bucket
        self.prefix = prefix  # empty or ending in '/'
        self.client = client
        self.download_client = download_client if download_client is not None else client
        self.list_calls = 0
        self.on_page: Callable[[], None] | None = None  # called per listing page: a long listing is alive

    def list(self) -> list[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        self.list_calls += 1
        out = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                if self.on_page is not None:
                    self.on_page()
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix):]
                    if key:
                        out.append(ObjectInfo(key, int(item["Size"]), item["ETag"].strip('"')))
        except (BotoCoreError, ClientError) as e:
            raise UpstreamError(f"listing {self.url} failed: {_describe(e)} (endpoint {self.client.meta.endpoint_url}, "
                                f"credentials: {getattr(self.client, 'credential_source', 'unknown')})",
                                f"listing S3 failed ({_public(e)})") from e
        return out

    @property
    def stall_timeout(self) -> float:
        """Seconds without a byte after which a download fails as stalled (the download client's read timeout)."""
        return float(self.download_client.meta.config.read_timeout)

    def fetch(self, obj: ObjectInfo, dest: Path, progress: Progress | None = None) -> Written:
        """Fetch the file in parallel ranged parts (supervisor/ranged.py), each pinned to the listed ETag."""
        from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

        key = self.prefix + safe_relpath(obj.key)
        try:
            sha256 = ranged.fetch(obj.key, obj.size, dest, functools.partial(self._read, key, obj), progress)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in _CHANGED:
                raise ChangedDuringDownload(obj.key) from None
            raise UpstreamError(f"downloading s3://{self.bucket}/{key} failed: {_describe(e)}",
                                f"S3 refused the download ({_public(e)})") from e
        except ReadTimeoutError as e:  # the socket waited the whole read timeout for one byte
            stalled = f"no data for {self.stall_timeout:g} s"
            raise UpstreamError(f"downloading s3://{self.bucket}/{key} failed: {stalled} ({_describe(e)})",
                                f"the download stalled: {stalled}") from e
        except BotoCoreError as e:
            raise UpstreamError(f"downloading s3://{self.bucket}/{key} failed: {_describe(e)}",
                                f"S3 could not be read ({_public(e)})") from e
        return Written(obj.size, sha256)

    def _read(self, key: str, obj: ObjectInfo, start: int, end: int | None) -> Generator[bytes, None, None]:
        """The bytes [start, end) of the listed object (all of it when `end` is None), as socket reads.

        If-Match on the listing's ETag pins every part to the version listed: once the object is replaced, each
        part asked for after that is refused (412), so a file is never assembled from two versions. The ETag
        and the range answered are checked too, for a store that ignores If-Match or Range."""
        args = {"Bucket": self.bucket, "Key": key, "IfMatch": f'"{obj.tag}"'}
        if end is not None:
            args["Range"] = f"bytes={start}-{end - 1}"
        resp = self.download_client.get_object(**args)
        body = resp["Body"]
        try:
            if resp["ETag"].strip('"') != obj.tag:
                raise ChangedDuringDownload(obj.key)
            if end is not None:
                answered = resp.get("ContentRange", "")
                if not answered.endswith(f"/{obj.size}"):
                    raise ChangedDuringDownload(obj.key)
                if answered != f"bytes {start}-{end - 1}/{obj.size}":
                    raise UpstreamError(f"s3://{self.bucket}/{key}: asked for bytes {start}-{end - 1}, got "
                                        f"{answered or 'the whole object'}", "S3 answered another byte range")
            yield from body.iter_chunks(S3_CHUNK) if end is None else _as_it_arrives(body)
        finally:
            body.close()


def _as_it_arrives(body) -> Generator[bytes, None, None]:
    """A ranged answer's bytes, each read returning what has arrived (up to S3_READ), not a set amount.

    botocore's StreamingBody reads a set amount, waiting until that much has arrived: small reads keep a
    trickle reporting (and a stopping replica ending) at each one, but at speed every read of every part in
    flight is a handoff of the interpreter lock, and those dominate the CPU of a parallel download. read1 of the
    urllib3 response beneath (a plain GET keeps botocore's reads, and with them its checksum checks, which do
    not apply to a range) returns what one socket read brings: few large reads at speed, a report per packet
    at a trickle. Its errors become botocore's, as StreamingBody's do, so a stall reads as one."""
    from botocore.exceptions import ReadTimeoutError, ResponseStreamingError
    from urllib3.exceptions import ProtocolError, ReadTimeoutError as URLLib3ReadTimeoutError

    raw = body._raw_stream  # noqa: SLF001 - the urllib3 response, for read1 (see above)
    while True:
        try:
            chunk = raw.read1(S3_READ)
        except URLLib3ReadTimeoutError as e:
            raise ReadTimeoutError(endpoint_url=e.url, error=e) from e
        except ProtocolError as e:
            raise ResponseStreamingError(error=e) from e
        if not chunk:
            return
        yield chunk


# Error codes of a GET for an object that is no longer the one listed: gone, replaced (If-Match), shorter.
_CHANGED = {"NoSuchKey", "404", "PreconditionFailed", "412", "InvalidRange", "416"}


def _describe(e: Exception) -> str:
    """A one-line reason, never with credentials (botocore messages do not carry them)."""
    from botocore.exceptions import ClientError

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip()
    return str(e)


def _public(e: Exception) -> str:
    """The kind of an S3 failure, for clients: an error code or the exception's class, never the endpoint."""
    from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

    if isinstance(e, ClientError):
        return str(e.response.get("Error", {}).get("Code", "error"))
    if isinstance(e, (EndpointConnectionError, ConnectTimeoutError)):
        return "cannot connect to S3"
    if isinstance(e, ReadTimeoutError):
        return "S3 did not answer in time"
    return type(e).__name__


def open_upstream(url: str, s3_client_factory: Callable = make_s3_client,
                  download_client_factory: Callable | None = None) -> Upstream:
    """The upstream for a spec root: s3://... or an absolute local directory. `download_client_factory`
    makes the client downloads use (the stall deadline as its read timeout); by default the listing's."""
    if url.startswith("s3://"):
        return S3Upstream(url, s3_client_factory(),
                          download_client_factory() if download_client_factory is not None else None)
    return LocalUpstream(url)
