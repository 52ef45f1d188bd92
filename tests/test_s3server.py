"""Self-tests for the SeaweedFS S3 fixture (tests/s3server.py, conftest.py)."""
import hashlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import botocore.config
import pytest
from botocore import UNSIGNED
from botocore.exceptions import BotoCoreError, ClientError

from tests.s3server import delete_prefix, list_keys, upload_dir


def _etag(client, bucket, key):
    return client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')


def test_preconfigured_bucket_exists(s3_client):
    names = [b["Name"] for b in s3_client.list_buckets()["Buckets"]]
    assert "models" in names


def test_put_get_list(s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="a/one.txt", Body=b"one")
    s3_client.put_object(Bucket=bucket, Key="a/two.txt", Body=b"two")
    s3_client.put_object(Bucket=bucket, Key="b/three.txt", Body=b"three")

    body = s3_client.get_object(Bucket=bucket, Key="a/one.txt")["Body"].read()
    assert body == b"one"
    assert list_keys(s3_client, bucket, "a/") == ["a/one.txt", "a/two.txt"]
    assert len(list_keys(s3_client, bucket)) == 3

    resp = s3_client.list_objects_v2(Bucket=bucket, Prefix="", Delimiter="/")
    assert sorted(p["Prefix"] for p in resp["CommonPrefixes"]) == ["a/", "b/"]

    with pytest.raises(ClientError) as ei:
        s3_client.get_object(Bucket=bucket, Key="a/missing.txt")
    assert ei.value.response["Error"]["Code"] in ("NoSuchKey", "404")


def test_bucket_fixture_is_fresh(s3_client, bucket):
    assert list_keys(s3_client, bucket) == []


def test_unsigned_requests_refused(s3, bucket):
    # plain HTTP, no signature at all
    for url in (f"{s3.endpoint_url}/", f"{s3.endpoint_url}/{bucket}?list-type=2"):
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(url, timeout=10)
        assert ei.value.code == 403
    # boto3 with signing switched off
    anon = s3.client(config=botocore.config.Config(signature_version=UNSIGNED))
    with pytest.raises(ClientError) as ei:
        anon.list_objects_v2(Bucket=bucket)
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


@pytest.mark.parametrize("creds", [
    {"aws_secret_access_key": "wrong-secret"},
    {"aws_access_key_id": "wrongkey"},
])
def test_wrong_credentials_refused(s3, s3_client, bucket, creds):
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"v")
    bad = s3.client(**creds)
    with pytest.raises(ClientError) as ei:
        bad.get_object(Bucket=bucket, Key="k")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError):
        bad.put_object(Bucket=bucket, Key="k2", Body=b"v")
    assert list_keys(s3_client, bucket) == ["k"]


def test_etag_is_md5_and_changes_on_overwrite(s3_client, bucket):
    v1, v2 = b"version one", b"version two"
    r1 = s3_client.put_object(Bucket=bucket, Key="m", Body=v1)
    assert r1["ETag"].strip('"') == hashlib.md5(v1).hexdigest()
    assert _etag(s3_client, bucket, "m") == hashlib.md5(v1).hexdigest()

    s3_client.put_object(Bucket=bucket, Key="m", Body=v2)
    assert _etag(s3_client, bucket, "m") == hashlib.md5(v2).hexdigest()
    assert s3_client.get_object(Bucket=bucket, Key="m")["Body"].read() == v2

    # same content again -> same ETag
    s3_client.put_object(Bucket=bucket, Key="m", Body=v2)
    assert _etag(s3_client, bucket, "m") == hashlib.md5(v2).hexdigest()


def test_upload_dir_and_delete_prefix(s3_client, bucket, tmp_path):
    (tmp_path / "m" / "1" / "sub").mkdir(parents=True)
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"\x00" * 1000)
    (tmp_path / "m" / "1" / "sub" / "vars.bin").write_bytes(b"x" * 10)
    (tmp_path / "m" / "2").mkdir()
    (tmp_path / "m" / "2" / "model.onnx").write_bytes(b"y")

    keys = upload_dir(s3_client, bucket, tmp_path / "m", "models/foo/")
    assert keys == ["models/foo/1/model.onnx", "models/foo/1/sub/vars.bin",
                    "models/foo/2/model.onnx"]
    assert list_keys(s3_client, bucket, "models/foo/") == keys
    assert _etag(s3_client, bucket, "models/foo/1/model.onnx") == \
        hashlib.md5(b"\x00" * 1000).hexdigest()

    assert delete_prefix(s3_client, bucket, "models/foo/1/") == 2
    assert list_keys(s3_client, bucket) == ["models/foo/2/model.onnx"]
    assert delete_prefix(s3_client, bucket, "") == 1
    assert list_keys(s3_client, bucket) == []


def test_delete_prefix_paginates(s3_client, bucket):
    for i in range(1005):  # > one list_objects_v2 page (1000)
        s3_client.put_object(Bucket=bucket, Key=f"p/{i:05d}", Body=b"")
    assert delete_prefix(s3_client, bucket, "p/") == 1005
    assert list_keys(s3_client, bucket) == []


def test_env_works_for_subprocess(s3, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="from-parent", Body=b"hello")
    code = (
        "import boto3, botocore.config, json, sys\n"
        "c = boto3.client('s3', config=botocore.config.Config("
        "s3={'addressing_style': 'path'}))\n"
        "b = sys.argv[1]\n"
        "body = c.get_object(Bucket=b, Key='from-parent')['Body'].read()\n"
        "c.put_object(Bucket=b, Key='from-child', Body=body + b'!')\n"
        "print(json.dumps(body.decode()))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **s3.env}
    out = subprocess.run([sys.executable, "-c", code, bucket], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == "hello"
    got = s3_client.get_object(Bucket=bucket, Key="from-child")["Body"].read()
    assert got == b"hello!"


def test_restart_keeps_data(s3, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="keep/me", Body=b"persisted")
    port = s3.s3_port
    t0 = time.monotonic()
    s3.restart()
    took = time.monotonic() - t0
    assert s3.running and s3.s3_port == port
    assert took < 30
    assert s3_client.get_object(Bucket=bucket, Key="keep/me")["Body"].read() \
        == b"persisted"
    s3_client.put_object(Bucket=bucket, Key="keep/new", Body=b"after")
    assert list_keys(s3_client, bucket, "keep/") == ["keep/me", "keep/new"]


def test_outage_refuses_connections(s3, s3_client, bucket):
    s3_client.put_object(Bucket=bucket, Key="k", Body=b"v")
    no_retry = s3.client(config=botocore.config.Config(
        retries={"max_attempts": 1}, connect_timeout=2, read_timeout=2))
    s3.stop()
    try:
        assert not s3.running
        with pytest.raises(BotoCoreError):  # EndpointConnectionError
            no_retry.get_object(Bucket=bucket, Key="k")
    finally:
        s3.start()
        s3.wait_ready()
    assert no_retry.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
