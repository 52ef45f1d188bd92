"""The S3 client the watcher uses: boto3 from the standard credential chain, with a lean listing parser.

A watcher pass lists the whole catalogue, up to 1,000 keys a page. botocore parses each key of a page by
walking the generic response model (every field of every object, types converted one by one), which costs
several times more than the request itself once a catalogue holds tens of thousands of models. The parser
here reads a ListObjectsV2 page's objects straight from the XML tree, keeping the three fields the watcher
reads (Key, Size, ETag), and hands the rest of the page (truncation, continuation token, encoding) to
botocore as usual. Signing, retries, errors and the paginator are botocore's own.
"""

from __future__ import annotations

import os
import threading

from botocore.compat import ETree
from botocore.parsers import ResponseParserFactory, RestXMLParser

_client_lock = threading.Lock()


class ListingParser(RestXMLParser):
    """botocore's S3 (rest-xml) parser, with ListObjectsV2 objects read directly: each as {Key, Size, ETag}."""

    def _do_parse(self, response, shape):
        if shape is None or shape.name != "ListObjectsV2Output" or not response.get("body"):
            return super()._do_parse(response, shape)
        root = self._parse_xml_string_to_dom(response["body"])
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
        parsed = super()._do_parse(dict(response, body=ETree.tostring(rest)), shape)
        if contents:
            parsed["Contents"] = contents
        return parsed


class ListingParserFactory(ResponseParserFactory):
    """Hands out `ListingParser` for S3's protocol; every other protocol is botocore's."""

    def create_parser(self, protocol_name):
        if protocol_name == "rest-xml":
            return ListingParser(**self._defaults)
        return super().create_parser(protocol_name)


def make_s3_client(endpoint_url: str | None = None):
    """A boto3 S3 client from the standard credential chain; unsigned when no credentials exist.

    With an endpoint (flag or AWS_ENDPOINT_URL) the client uses path-style addressing, which S3-compatible
    stores expect. Retries use botocore's adaptive mode, so throttling slows the watcher instead of failing it.
    """
    import boto3
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config

    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    with _client_lock:  # boto3 sessions are not thread-safe to create
        core = botocore.session.get_session()
        factory = ListingParserFactory()
        # Timestamps stay strings: the watcher never reads one, and parsing each with dateutil is costly.
        factory.set_parser_defaults(timestamp_parser=str)
        core.register_component("response_parser_factory", factory)
        session = boto3.session.Session(botocore_session=core)
        extra = {}
        credentials = session.get_credentials()
        if credentials is None:
            extra["signature_version"] = UNSIGNED
        config = Config(
            s3={"addressing_style": "path"} if endpoint_url else {},
            retries={"max_attempts": 3, "mode": "adaptive"},
            connect_timeout=5,
            read_timeout=10,
            max_pool_connections=32,
            **extra,
        )
        region = session.region_name or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        client = session.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
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


