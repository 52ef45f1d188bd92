"""The watcher's S3 client: its listing parser gives what botocore's own parser gives for the fields the watcher
reads, on a hand-written page and against the real S3 server (keys that need escaping, many pages)."""

from __future__ import annotations

import botocore.session
from hypothesis import given, settings, strategies as st
from xml.sax.saxutils import escape

from supervisor.s3_client import ListingParser, make_s3_client
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


def _parse_both(body: bytes) -> tuple[dict, dict]:
    session = botocore.session.get_session()
    shape = session.get_service_model("s3").operation_model("ListObjectsV2").output_shape
    response = {"body": body, "headers": {"x-amz-request-id": "r"}, "status_code": 200}
    factory = session.get_component("response_parser_factory")
    stock = factory.create_parser("rest-xml").parse(dict(response), shape)
    lean = ListingParser().parse(dict(response), shape)
    return stock, lean


keys = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(objects=st.lists(st.tuples(keys, st.integers(0, 2**40), st.text("0123456789abcdef", min_size=32, max_size=32)),
                        max_size=20),
       truncated=st.booleans(), token=st.one_of(st.none(), st.text("abcdefXYZ0123456789=", min_size=1, max_size=30)))
def test_listing_page_reads_as_botocore_reads_it(objects, truncated, token):
    stock, lean = _parse_both(_page(objects, truncated, token))
    assert [(c["Key"], c["Size"], c["ETag"]) for c in lean.get("Contents", [])] == \
        [(c["Key"], c["Size"], c["ETag"]) for c in stock.get("Contents", [])]
    assert {k: v for k, v in lean.items() if k != "Contents"} == {k: v for k, v in stock.items() if k != "Contents"}


def test_other_responses_are_botocores():
    session = botocore.session.get_session()
    shape = session.get_service_model("s3").operation_model("GetBucketVersioning").output_shape
    body = f'<VersioningConfiguration xmlns="{NS}"><Status>Enabled</Status></VersioningConfiguration>'.encode()
    response = {"body": body, "headers": {}, "status_code": 200}
    assert ListingParser().parse(dict(response), shape)["Status"] == "Enabled"


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
