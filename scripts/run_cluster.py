"""`make run-cluster`: one SeaweedFS, N replicas and HAProxy on 127.0.0.1, serving examples/cluster.

Uploads N_MODELS copies of the iris ONNX classifier (m00, m01, ...) to s3://models/cluster/, starts the
replicas with examples/cluster/api.yaml and HAProxy with a config from deploy/haproxy/config.py, prints a curl
line, and on Ctrl-C (or SIGTERM) stops everything it started, by PID. State lives in .state/cluster/.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploy.haproxy.config import Server  # noqa: E402
from scripts.model_factory import IRIS_BIAS, IRIS_WEIGHTS, write_onnx_linear  # noqa: E402
from tests.haproxy_proc import HAProxyProcess  # noqa: E402
from tests.replica_proc import ReplicaProcess  # noqa: E402
from tests.s3server import SeaweedS3, upload_dir  # noqa: E402

SPEC = ROOT / "examples" / "cluster" / "api.yaml"
BUCKET, PREFIX = "models", "cluster"


def upload_models(s3: SeaweedS3, count: int) -> list[str]:
    """m00 .. m{count-1}, each a versioned ONNX iris classifier (version 1)."""
    names = [f"m{i:02d}" for i in range(count)]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            write_onnx_linear(Path(tmp) / name / "1" / "model.onnx", IRIS_WEIGHTS, IRIS_BIAS)
        upload_dir(s3.client(), BUCKET, tmp, PREFIX)
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--models", type=int, default=9)
    p.add_argument("--port", type=int, default=8080, help="HAProxy's port (default 8080)")
    p.add_argument("--state", type=Path, default=ROOT / ".state" / "cluster")
    args = p.parse_args(argv)
    if args.replicas < 1 or args.models < 1:
        print("error: --replicas and --models must be at least 1", file=sys.stderr)
        return 2
    shutil.rmtree(args.state, ignore_errors=True)  # a fresh SeaweedFS each run (its identities live there)
    args.state.mkdir(parents=True)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    s3 = SeaweedS3(args.state / "seaweedfs", buckets=[BUCKET])
    replicas: list[ReplicaProcess] = []
    haproxy = None
    try:
        s3.start()
        stopping.append(s3.stop)
        s3.wait_ready(timeout=60)
        names = upload_models(s3, args.models)
        for i in range(1, args.replicas + 1):
            r = ReplicaProcess(SPEC, args.state / f"replica-{i}", env=s3.env, poll_interval=5.0).start()
            replicas.append(r)
        for r in replicas:
            r.wait_ready()
        haproxy = HAProxyProcess(args.state / "haproxy", [Server(f"r{i}", f"127.0.0.1:{r.port}")
                                                         for i, r in enumerate(replicas, start=1)],
                                 port=args.port).start().wait_ready()
        print(f"\nSeaweedFS S3 on {s3.endpoint_url} holds models {', '.join(names)} under s3://{BUCKET}/{PREFIX}/.")
        for i, r in enumerate(replicas, start=1):
            print(f"replica r{i} (pid {r.proc.pid}) on {r.base}, log {r.log_path}")
        print(f"HAProxy (pid {haproxy.proc.pid}) on {haproxy.base}, config {haproxy.config_path}\n")
        print("Ask a model through HAProxy (the X-Replica header names the replica that answered):")
        print(f"  curl -si -X POST -H 'Content-Type: application/json' -d @examples/onnx/sample.json "
              f"'{haproxy.base}/?model={names[0]}'\n")
        print("Ctrl-C stops everything.")
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("\nstopping HAProxy, the replicas and SeaweedFS")
        if haproxy is not None and haproxy.proc is not None:
            haproxy.stop()
        for r in replicas:
            r.stop()
        for stop in stopping:
            stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
