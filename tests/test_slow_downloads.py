"""A slow, stalled or hanging S3 path (DESIGN.md 6 and 7a): real replicas behind a misbehaving TCP proxy in
front of SeaweedFS.

- A download trickling at 30 KB/s delays no other model's update, and /healthz stays 200 all along (the
  heartbeat is the watcher loop's, not the download's).
- A download that receives nothing fails with the stall reason after --download-stall-timeout.
- A restart while S3 accepts connections and never answers is ready from the versions on disk.
"""
from __future__ import annotations

import json
import time

import requests

from tests.helpers import write_api
from tests.predictors import json_predictor
from tests.replica_proc import wait_for
from tests.throttle_proxy import ThrottleProxy

PREDICTOR = json_predictor("""
def predict(self, payload):
    return self.client.get_model(payload["model"])
""")


def spec(folder, bucket):
    return write_api(folder, PREDICTOR, type="python", name="slow", models={"dir": f"s3://{bucket}/models/"})


def put(s3_client, bucket, key: str, body: bytes) -> None:
    s3_client.put_object(Bucket=bucket, Key=key, Body=body)


def answer(r, model: str):
    try:
        resp = r.post("/", json={"model": model}, timeout=5)
    except requests.RequestException:
        return None
    return resp.json() if resp.status_code == 200 else None


def through(proxy: ThrottleProxy, s3) -> dict:
    return {**s3.env, "AWS_ENDPOINT_URL": proxy.endpoint_url}


def test_a_trickling_download_delays_no_other_update_and_no_healthz(s3, s3_client, bucket, replica, tmp_path):
    put(s3_client, bucket, "models/small/1/model.json", json.dumps({"v": 1}).encode())
    state = tmp_path / "state"
    with ThrottleProxy(s3.s3_port, mode="trickle", rate=30_000) as proxy:
        r = replica(spec(tmp_path / "api", bucket), env=through(proxy, s3), state_dir=state, poll_interval=0.5,
                    extra_args=("--heartbeat-timeout", "3"))
        assert answer(r, "small") == {"v": 1}
        put(s3_client, bucket, "models/big/1/model.json", b" " * (4 << 20))  # about 140 s at 30 KB/s
        assert proxy.slowed.wait(10), "the big download never started"
        put(s3_client, bucket, "models/small/1/model.json", json.dumps({"v": 2}).encode())
        started = time.monotonic()
        wait_for(lambda: answer(r, "small") == {"v": 2}, timeout=8, interval=0.2,
                 message="the small model's update served while the big one downloads")
        statuses = []
        while time.monotonic() - started < 5:  # past the heartbeat timeout (3 s)
            statuses.append(r.get("/healthz", timeout=5).status_code)
            time.sleep(0.2)
        assert set(statuses) == {200}, statuses
        assert not (state / "models" / "big" / "1").exists(), "the big download must still be under way"


def test_a_stalled_download_fails_with_the_stall_reason(s3, s3_client, bucket, replica, tmp_path):
    put(s3_client, bucket, "models/small/1/model.json", json.dumps({"v": 1}).encode())
    with ThrottleProxy(s3.s3_port, mode="stall") as proxy:
        r = replica(spec(tmp_path / "api", bucket), env=through(proxy, s3), state_dir=tmp_path / "state",
                    poll_interval=0.5, extra_args=("--download-stall-timeout", "2"))
        put(s3_client, bucket, "models/big/1/model.json", b" " * (1 << 20))
        assert proxy.stalled.wait(10), "the big download never started"
        stalled_at = time.monotonic()
        put(s3_client, bucket, "models/small/1/model.json", json.dumps({"v": 2}).encode())

        def big_error():
            for m in r.get("/v1/models", timeout=5).json()["models"]:
                for v in m["model_version_status"] if m["name"] == "big" else ():
                    return v["error"]
            return None

        error = wait_for(big_error, timeout=8, interval=0.2, message="the stalled download's failure")
        assert "no data for 2 s" in error, error
        assert time.monotonic() - stalled_at < 8
        wait_for(lambda: answer(r, "small") == {"v": 2}, timeout=5, interval=0.2, message="the small update")
        assert r.get("/healthz", timeout=5).status_code == 200


def test_a_restart_while_s3_hangs_is_ready_from_the_disk(s3, s3_client, bucket, replica, tmp_path):
    put(s3_client, bucket, "models/small/1/model.json", json.dumps({"v": 1}).encode())
    state = tmp_path / "state"
    api = spec(tmp_path / "api", bucket)
    with ThrottleProxy(s3.s3_port) as proxy:
        first = replica(api, env=through(proxy, s3), state_dir=state, poll_interval=0.5)
        assert answer(first, "small") == {"v": 1}
        first.stop()
        proxy.mode = "hang"  # accepts, never answers: a listing waits for its read timeouts
        started = time.monotonic()
        second = replica(api, env=through(proxy, s3), state_dir=state, poll_interval=0.5, wait=False)
        second.wait_ready(timeout=15, interval=0.1)
        assert time.monotonic() - started < 15
        assert answer(second, "small") == {"v": 1}
