"""What an error says to HTTP clients: the reason, without this machine's paths or the S3 endpoint.

Errors reach clients in 404 and 503 bodies, `/readyz` and `/v1/models`. Their full text (the state directory,
a local model folder, the endpoint a listing could not reach) tells a client how the host is laid out and
where its object store lives; it goes to the log, and the copy a client sees has each such place replaced by a
label: the places the replica knows by name (the state directory, the runtime folder, a local model root), then
any other URL with a host (S3 URLs, `s3://bucket/prefix`, name no host and stay) and any other absolute path.
"""

from __future__ import annotations

import re
from typing import Mapping

from replica.spec import ModelSource

_URL = re.compile(r"\b(?!s3://)[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"()<>,;]+")
_PATH = re.compile(r"(?<![\w.:/~>-])/[^\s'\"(),;:<>]+")
STATE_DIR, RUNTIME_DIR, ENDPOINT, PATH = "<state dir>", "<runtime dir>", "<endpoint>", "<path>"


def public_message(text: str, known: Mapping[str, str] | None = None, anywhere: bool = True) -> str:
    """`text` with every place in `known` (path -> label) replaced by its label, then, when `anywhere`, any
    other URL and any other absolute path by a placeholder. A layout error quotes upstream object keys, which
    may look like absolute paths (`/tmp/evil.bin` is a key S3 allows): it is written with `anywhere=False`."""
    for place, label in sorted((known or {}).items(), key=lambda item: -len(item[0])):
        if place:
            text = text.replace(place, label)
    return _PATH.sub(PATH, _URL.sub(ENDPOINT, text)) if anywhere else text


def known_places(state_dir: str, runtime_dir: str, sources: tuple[ModelSource, ...] = ()) -> dict[str, str]:
    """The labels of the places a replica knows: its folders, and each local model root by its spec key."""
    places = {str(state_dir): STATE_DIR, str(runtime_dir): RUNTIME_DIR}
    for s in sources:
        if not s.url.startswith("s3://"):
            places[s.url] = source_label(s)
    return places


def source_label(source: ModelSource) -> str:
    """How a client sees a local model root: by the spec key that names it."""
    return "<models.dir>" if source.is_dir else f"<model_path of {source.name}>"
