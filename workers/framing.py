"""Where an HTTP/1.1 request ends in the bytes read so far, so the front's event loop can wait for a whole request
without a thread.

This is framing only: the request line and the header fields that decide the body's length (`Content-Length`,
`Transfer-Encoding`, `Expect`). gunicorn's own parser still parses the complete request in the worker thread and
rejects what is malformed; anything this module cannot frame with certainty is marked `ambiguous`, handed over
as it is and the connection closed after the answer, so the two parsers never disagree about where the next
request starts.
"""

from __future__ import annotations

from dataclasses import dataclass

HEAD_END = b"\r\n\r\n"


@dataclass
class Head:
    """What the loop needs from a request's head. `body_start` is the offset just after the blank line."""

    method: bytes
    path: bytes
    body_start: int
    content_length: int | None = None  # None: no Content-Length (chunked, or no body)
    chunked: bool = False
    expect_continue: bool = False
    ambiguous: bool = False  # conflicting or malformed framing: hand over as is, close after the answer


def _field(lower_head: bytes, name: bytes) -> tuple[int, int]:
    """(count, offset of the first value) of header `name` (lower case, with its leading CRLF and colon)."""
    first = lower_head.find(name)
    if first < 0:
        return 0, -1
    return (2 if lower_head.find(name, first + len(name)) >= 0 else 1), first + len(name)


def _value(head: bytes, offset: int) -> bytes:
    end = head.find(b"\r\n", offset)
    return head[offset:end if end >= 0 else len(head)].strip(b" \t")


def parse_head(buf: bytes | bytearray, head_end: int) -> Head:
    """The framing of the request whose head is `buf[:head_end]` (`head_end` is where CRLFCRLF starts)."""
    head = bytes(buf[:head_end + 2])  # keep the last field's CRLF so every field reads "\r\nname:"
    line_end = head.find(b"\r\n")
    parts = head[:line_end].split(b" ")
    method = parts[0]
    path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
    h = Head(method=method, path=path, body_start=head_end + 4)
    lower = head.lower()
    n_cl, cl_at = _field(lower, b"\r\ncontent-length:")
    n_te, te_at = _field(lower, b"\r\ntransfer-encoding:")
    if n_te:
        codings = _value(lower, te_at)
        h.chunked = codings.rsplit(b",", 1)[-1].strip() == b"chunked"
        if n_te > 1 or n_cl or not h.chunked:
            h.ambiguous = True  # TE with CL, several TE fields, or a final coding other than chunked
    elif n_cl:
        value = _value(head, cl_at)
        if n_cl > 1 or not value.isdigit():
            h.ambiguous = True
        else:
            h.content_length = int(value)
    n_ex, ex_at = _field(lower, b"\r\nexpect:")
    h.expect_continue = n_ex == 1 and _value(lower, ex_at) == b"100-continue" and b"HTTP/1.1" in parts[-1:]
    return h


def chunked_end(buf: bytes | bytearray, pos: int) -> tuple[int | None, int, bool]:
    """Scan a chunked body from `pos` (the start of a chunk-size line).

    Returns (end, resume, bad): `end` is the offset just after the body (last chunk and trailers) once it is all
    in `buf`, else None and `resume` is where the scan can carry on when more bytes arrive; `bad` says the
    chunk framing is malformed (gunicorn's parser will answer it)."""
    n = len(buf)
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None, pos, False
        size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip(b" \t")
        try:
            size = int(size_text, 16)
        except ValueError:
            return None, pos, True
        if size_text[:1] in (b"+", b"-") or size_text[:2].lower() == b"0x":
            return None, pos, True
        if size == 0:
            trailer = line_end + 2
            if buf[trailer:trailer + 2] == b"\r\n":
                return trailer + 2, pos, False
            end = buf.find(HEAD_END, line_end)
            return (end + 4 if end >= 0 else None), pos, False
        data_end = line_end + 2 + size
        if n < data_end + 2:
            return None, pos, False
        if buf[data_end:data_end + 2] != b"\r\n":
            return None, pos, True
        pos = data_end + 2
