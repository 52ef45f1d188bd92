"""deploy/haproxy/config.py: the HAProxy configuration it writes, checked by HAProxy itself (`haproxy -c`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploy.haproxy.config import Options, Server, server_ids, render
from tests.haproxy_proc import find_haproxy

HAPROXY = find_haproxy()
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (make test installs it)")


def generate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.haproxy.config", *args], capture_output=True, text=True)


def haproxy_check(path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True,
                          env={**os.environ, **env})


@needs_haproxy
def test_local_config_is_valid_haproxy(tmp_path):
    out = tmp_path / "haproxy.cfg"
    result = generate("--bind", "127.0.0.1:8080", "--server", "127.0.0.1:8001", "--server", "b=127.0.0.1:8002",
                      "--stats-socket", str(tmp_path / "s.sock"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert "balance hash var(txn.model)" in text and "hash-type consistent" in text
    assert "hash-balance-factor 200" in text and "option httpchk GET /readyz" in text
    assert "retry-on conn-failure empty-response 503" in text
    assert "server r1 127.0.0.1:8001 id" in text and "server b 127.0.0.1:8002 id" in text
    check = haproxy_check(out)
    assert check.returncode == 0, check.stdout + check.stderr


@needs_haproxy
def test_round_robin_config_is_valid_haproxy(tmp_path):
    out = tmp_path / "haproxy.cfg"
    assert generate("--round-robin", "--server", "127.0.0.1:8001", "-o", str(out)).returncode == 0
    assert "balance roundrobin" in out.read_text() and "hash-type" not in out.read_text()
    assert haproxy_check(out).returncode == 0


@needs_haproxy
def test_kubernetes_config_is_valid_haproxy(tmp_path):
    out = tmp_path / "haproxy.cfg"
    assert generate("--kubernetes", "4", "--bind", ":8080", "-o", str(out)).returncode == 0
    text = out.read_text()
    assert 'server replica-3 "replica-3.replica.${POD_NAMESPACE}.svc.${CLUSTER_DOMAIN}:8888"' in text
    assert "resolvers cluster" in text
    check = haproxy_check(out, POD_NAMESPACE="models", CLUSTER_DOMAIN="cluster.local")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("args, fix", [
    ((), "--server HOST:PORT"),
    (("--server", "localhost"), "HOST:PORT or NAME=HOST:PORT"),
    (("--server", "a b=127.0.0.1:1"), "a name holds only"),
    (("--server", "a=127.0.0.1:1", "--server", "a=127.0.0.1:2"), "unique"),
    (("--server", "127.0.0.1:1", "--balance-factor", "90"), "above 100"),
    (("--server", "127.0.0.1:1", "--kubernetes", "3"), "not both"),
])
def test_bad_options_exit_2_with_one_line(args, fix):
    result = generate(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and fix in result.stderr, result.stderr
    assert result.stdout == ""


def test_a_server_keeps_its_id_when_others_come_and_go():
    """The ring places a server by its id: ids that depend only on the name keep the other models in place."""
    three = server_ids(["r1", "r2", "r3"])
    assert server_ids(["r1", "r3"]) == {"r1": three["r1"], "r3": three["r3"]}
    assert server_ids(["r4", "r3", "r2", "r1"])["r2"] == three["r2"]
    text = render(Options(servers=[Server("r2", "10.0.0.9:80"), Server("r1", "10.0.0.1:80")]))
    assert f"server r1 10.0.0.1:80 id {three['r1']}" in text


@given(st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12), unique=True, max_size=50))
def test_server_ids_are_unique_and_in_range(names):
    ids = server_ids(names)
    assert len(set(ids.values())) == len(names)
    assert all(1 <= i < 1 << 20 for i in ids.values())
