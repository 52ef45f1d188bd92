"""Replica settings that are not part of the API spec: flags of `replica serve`, each with an env variable."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import platformdirs

from supervisor.s3_client import make_s3_client


def default_state_dir(api_name: str) -> Path:
    return Path(platformdirs.user_cache_dir("model-replica")) / api_name


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 8888
    poll_interval: float = 10.0
    max_request_size: int = 64 << 20
    log_format: str = "text"
    s3_endpoint: str | None = None
    drain_timeout: float = 30.0
    heartbeat_timeout: float = 40.0
    worker_timeout: float = 30.0
    load_wait: float = 30.0  # with caching, how long a request waits for its version's fetch and load
    load_timeout: float = 600.0  # a load_model that has not returned after this fails its version
    request_timeout: float = 300.0  # a request whose predictor has not answered after this gets 504
    metrics_model_labels: str = "all"  # where /metrics series carry the model's name: all, counters, none
    worker_max_rss: int | None = None  # bytes: a worker past it is replaced, its replacement ready first
    access_log: bool = True
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: int = 5
    worker_connections: int = 1000
    max_buffered_bytes: int = 256 << 20
    download_stall_timeout: float = 30.0  # a download that receives no byte for this long fails as stalled
    grpc_port: int | None = None  # the Open Inference Protocol over gRPC on host:grpc_port; None: off

    @property
    def s3_client_factory(self) -> Callable:
        """The client listings use: bounded by the default connect and read timeouts."""
        return functools.partial(make_s3_client, self.s3_endpoint)

    @property
    def s3_download_client_factory(self) -> Callable:
        """The client downloads use: its read timeout is the stall deadline, so "no byte for N s" fails the
        download without making a hanging listing wait that long too."""
        return functools.partial(make_s3_client, self.s3_endpoint, read_timeout=self.download_stall_timeout)
