"""The watcher's S3 client: its listing parser gives what botocore's own parser gives for the fields the watcher
reads, on a hand-written page and against the real S3 server (keys that need escaping, many pages)."""

from __future__ import annotations

import botocore.session
import pytest
from hypothesis import given, settings, strategies as st
from xml.sax.saxutils import escape

from supervisor.s3_client import make_s3_client, read_listing_page
from supervisor.upstream import S3Upstream
from tests.helpers import put_objects

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def _page(objects: list[tuple[str, int, str]], truncated: bool, token: str | None) -> bytes:
    items = "".join(
        f"<Contents><Key>{escape(k)}</Key><LastModified>2026-11-29T10:00:00.000Z</LastModified>"
        f"<ETag>&quot;{e}&quot;</ETag><ChecksumAlgorithm>CRC32</ChecksumAlgorithm><Size>{s}</Size>"
        f"<Owner><ID>abc</ID><DisplayName>x</DisplayName></Owner><StorageClass>STANDARD</StorageClass></Contents>"
        for k, s, e in objects)
    more = f"<NextContinuationToken>{token}</NextContinuationToken>" if token else ""
    return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{NS}"><Name>b</Name>'
            f"<Prefix>models/</Prefix><KeyCount>{len(objects)}</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{items}{more}"
            f"<CommonPrefixes><Prefix>models/a/</Prefix></CommonPrefixes></ListBucketResult>").encode()


def _parse(operation: str, body: bytes, lean: bool) -> tuple[dict, dict]:
    """(the response as parsed, the response dict after the before-parse step): with `lean`, the way the
    watcher's client reads it (read_listing_page, then botocore's parser on what is left), else botocore's."""
    session = botocore.session.get_session()
    model = session.get_service_model("s3").operation_model(operation)
    response = {"body": body, "headers": {"x-amz-request-id": "r"}, "status_code": 200}
    customized: dict = {}
    if lean:
        read_listing_page(operation_model=model, response_dict=response, customized_response_dict=customized)
    if response["status_code"] != 200:
        return {}, response
    parsed = session.get_component("response_parser_factory").create_parser("rest-xml").parse(response,
                                                                                             model.output_shape)
    parsed.update(customized)
    return parsed, response


keys = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(objects=st.lists(st.tuples(keys, st.integers(0, 2**40), st.text("0123456789abcdef", min_size=32, max_size=32)),
                        max_size=20),
       truncated=st.booleans(), token=st.one_of(st.none(), st.text("abcdefXYZ0123456789=", min_size=1, max_size=30)))
def test_listing_page_reads_as_botocore_reads_it(objects, truncated, token):
    body = _page(objects, truncated, token)
    (stock, _), (lean, _) = _parse("ListObjectsV2", body, lean=False), _parse("ListObjectsV2", body, lean=True)
    assert [(c["Key"], c["Size"], c["ETag"]) for c in lean.get("Contents", [])] == \
        [(c["Key"], c["Size"], c["ETag"]) for c in stock.get("Contents", [])]
    assert {k: v for k, v in lean.items() if k != "Contents"} == {k: v for k, v in stock.items() if k != "Contents"}


@pytest.mark.parametrize("operation", ["ListObjectsV2", "GetBucketVersioning"])
def test_an_error_or_a_cut_body_with_status_200_is_retried_as_botocore_would(operation):
    error = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>x</Message></Error>'
    cut = _page([("a/model.json", 3, "0" * 32)], False, None)[:-40]
    for body in (error, cut):
        assert _parse(operation, body, lean=True)[1]["status_code"] == 500


def test_other_responses_are_botocores():
    body = f'<VersioningConfiguration xmlns="{NS}"><Status>Enabled</Status></VersioningConfiguration>'.encode()
    assert _parse("GetBucketVersioning", body, lean=True)[0]["Status"] == "Enabled"


def test_s3_listing_across_pages_with_keys_that_need_escaping(s3, bucket, s3_client, monkeypatch):
    special = ["a b/1/model.onnx", "q&a/x+y.txt", "ünï/c%20d.bin", "lt</gt>.json", "plus+/=eq"]
    objects = {f"models/{k}": k.encode() for k in special}
    objects.update({f"models/many/{i:04d}": b"x" * (i % 5) for i in range(1234)})  # two pages
    put_objects(s3_client, bucket, objects, threads=16)
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    client = make_s3_client()
    listed = S3Upstream(f"s3://{bucket}/models/", client).list()
    truth = [(o["Key"][len("models/"):], o["Size"], o["ETag"].strip('"'))
             for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="models/")
             for o in page["Contents"]]
    assert [(o.key, o.size, o.tag) for o in listed] == truth
    assert {o.key for o in listed} >= set(special) and len(listed) == len(objects)
