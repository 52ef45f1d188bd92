"""The S3 client the watcher uses: boto3 from the standard credential chain, with a lean listing page reader.

A watcher pass lists the whole catalogue, up to 1,000 keys a page. botocore reads each page twice: once to
check that a 200 is not an error in disguise (S3 can answer 200 with an <Error> body, or a body cut short),
and once to parse it, walking its generic response model over every field of every object. Once a catalogue
holds tens of thousands of models that costs more than the request itself. Here a ListObjectsV2 page is read
once, in place of botocore's check and with the same outcome (a cut or <Error> body is a 500 that botocore's
retries take); its objects are taken straight from the XML tree, keeping the three fields the watcher reads
(Key, Size, ETag), and the rest of the page (truncation, continuation token, encoding) is botocore's to parse
as always. Signing, retries, errors and the paginator are botocore's own.
"""

from __future__ import annotations

import os
import threading

from botocore import handlers
from botocore.compat import ETree, XMLParseError

_client_lock = threading.Lock()
_botocore_200_check = handlers._handle_200_error  # noqa: SLF001 - replaced for ListObjectsV2 only, see above


def split_listing_page(body: bytes) -> tuple[list[dict], bytes] | None:
    """A ListObjectsV2 page's objects as {Key, Size, ETag}, and the page without them; None when the body is
    not a listing (cut short, or an <Error> document)."""
    try:
        parser = ETree.XMLParser(target=ETree.TreeBuilder(), encoding="utf-8")
        parser.feed(body)
        root = parser.close()
    except XMLParseError:
        return None
    if root.tag == "Error":
        return None
    ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    contents_tag, key_tag, size_tag, etag_tag = ns + "Contents", ns + "Key", ns + "Size", ns + "ETag"
    contents = []
    rest = ETree.Element(root.tag)
    for node in root:
        if node.tag != contents_tag:
            rest.append(node)
            continue
        item = {}
        for field in node:
            if field.tag == key_tag:
                item["Key"] = field.text or ""
            elif field.tag == size_tag:
                item["Size"] = int(field.text)
            elif field.tag == etag_tag:
                item["ETag"] = field.text or ""
        contents.append(item)
    return contents, ETree.tostring(rest)


def read_listing_page(operation_model, response_dict, customized_response_dict, **kwargs) -> None:
    """botocore's before-parse check of S3 answers, except that a ListObjectsV2 page is read here, once: its
    objects go straight into the parsed response, and only the rest of the page is left to botocore's parser."""
    if operation_model.name != "ListObjectsV2" or response_dict.get("status_code") != 200 \
            or not response_dict.get("body"):
        _botocore_200_check(operation_model=operation_model, response_dict=response_dict, **kwargs)
        return
    page = split_listing_page(response_dict["body"])
    if page is None:
        response_dict["status_code"] = 500  # as botocore's check does: retried
        return
    contents, response_dict["body"] = page
    if contents:
        customized_response_dict["Contents"] = contents


LISTING_READ_TIMEOUT = 10.0  # seconds without a byte before a listing request is retried (3 attempts)
CONNECT_TIMEOUT = 5.0


def make_s3_client(endpoint_url: str | None = None, read_timeout: float = LISTING_READ_TIMEOUT):
    """A boto3 S3 client from the standard credential chain; unsigned when no credentials exist.

    With an endpoint (flag or AWS_ENDPOINT_URL) the client uses path-style addressing, which S3-compatible
    stores expect. Retries use botocore's adaptive mode, so throttling slows the watcher instead of failing it.
    Every request is bounded: a connection gets CONNECT_TIMEOUT seconds, and `read_timeout` is the longest
    wait for the next byte (the socket's timeout, per read), so a hanging S3 fails a listing in bounded time
    and a download that receives nothing for that long fails as stalled, while a slow one that keeps moving
    goes on. Downloads get their own client with the stall deadline (`--download-stall-timeout`).
    """
    import boto3
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config

    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    with _client_lock:  # boto3 sessions are not thread-safe to create
        session = boto3.session.Session(botocore_session=botocore.session.get_session())
        extra = {}
        credentials = session.get_credentials()
        if credentials is None:
            extra["signature_version"] = UNSIGNED
        config = Config(
            s3={"addressing_style": "path"} if endpoint_url else {},
            retries={"max_attempts": 3, "mode": "adaptive"},
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=read_timeout,
            max_pool_connections=32,
            **extra,
        )
        region = session.region_name or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
    client.meta.events.unregister("before-parse.s3.*", _botocore_200_check)
    client.meta.events.register_first("before-parse.s3.*", read_listing_page)
    # Where the credentials came from (botocore's provider name: env, shared-credentials-file, iam-role...),
    # for error messages: a listing error is most often the wrong credentials being picked up.
    client.credential_source = _CREDENTIAL_SOURCES.get(credentials.method, credentials.method) if credentials \
        else "none found, requests are unsigned"
    return client


_CREDENTIAL_SOURCES = {
    "env": "environment variables (AWS_ACCESS_KEY_ID)",
    "shared-credentials-file": "the shared credentials file (~/.aws/credentials)",
    "config-file": "the AWS config file (~/.aws/config)",
    "iam-role": "the instance role (EC2 metadata)",
    "container-role": "the container role",
}


