"""Write an HAProxy configuration that routes each model to the replica that holds it.

Replicas keep `cache_size` models in memory; spread at random, every replica would load every model. Routing
by model name with consistent hashing gives each model a home replica, so N replicas hold N x `cache_size`
models. Bounded load (`hash-balance-factor`) sends a model that is hammered beyond its home's share to the
next replica on the ring instead of queueing on one. Only a dead replica's models move (to the next replica
on the ring), and they move back when it returns, because a server's places on the ring come from its `id`,
which is derived here from the server's name alone (not from its position in the list or its address).

    python -m deploy.haproxy.config --bind 127.0.0.1:8080 \\
        --server r1=10.0.0.1:8888 --server r2=10.0.0.2:8888 > haproxy.cfg

`--kubernetes N` writes the servers of a StatefulSet instead (pod DNS names resolved at run time).
"""

from __future__ import annotations

import argparse
import re
import sys
import zlib
from dataclasses import dataclass, field

SERVER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# HAProxy places a server on the ring at full_hash(id * 4096 + node): ids below 2**20 keep those keys apart.
MAX_ID = (1 << 20) - 1


@dataclass(frozen=True)
class Server:
    name: str
    address: str  # host:port


@dataclass
class Options:
    bind: str = "127.0.0.1:8080"
    servers: list[Server] = field(default_factory=list)
    balance_factor: int = 200  # percent of the average in-flight requests a replica may take before spilling
    round_robin: bool = False  # plain round robin, for comparison: no affinity
    check_interval: str = "2s"
    fall: int = 2
    rise: int = 2
    retries: int = 3
    timeout_server: str = "60s"
    hard_stop_after: str = "30s"
    stats_socket: str | None = None
    log_stdout: bool = True  # one line per request on standard output (the container's or test's log)
    resolvers: bool = False  # servers are DNS names resolved at run time (Kubernetes)
    bufsize: int = 65536  # requests larger than this are never retried (HAProxy keeps a copy to replay)


class ConfigError(ValueError):
    pass


def parse_server(text: str, index: int) -> Server:
    """`NAME=HOST:PORT` or `HOST:PORT` (named rINDEX)."""
    name, sep, address = text.rpartition("=")
    if not sep:
        name, address = f"r{index}", text
    host, colon, port = address.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--server {text!r}: give HOST:PORT or NAME=HOST:PORT, e.g. r1=127.0.0.1:8001")
    if not SERVER_NAME.match(name):
        raise ConfigError(f"--server {text!r}: a name holds only letters, digits, '.', '_' and '-'")
    return Server(name, address)


def server_ids(names: list[str]) -> dict[str, int]:
    """A stable HAProxy `id` per server name: the ring places a server by its id, so deriving the id from the
    name keeps every other server's models where they are when one is added, removed or re-addressed."""
    ids: dict[str, int] = {}
    used: set[int] = set()
    for name in names:
        ident = zlib.crc32(name.encode()) % MAX_ID + 1
        while ident in used:  # a crc collision between two names: the next free id, in list order
            ident = ident % MAX_ID + 1
        used.add(ident)
        ids[name] = ident
    return ids


def render(opts: Options) -> str:
    """The whole haproxy.cfg text."""
    if not opts.servers:
        raise ConfigError("no servers: pass --server HOST:PORT (once per replica) or --kubernetes N")
    names = [s.name for s in opts.servers]
    if len(set(names)) != len(names):
        raise ConfigError(f"server names must be unique: {names}")
    if not opts.round_robin and not 100 < opts.balance_factor:
        raise ConfigError(f"--balance-factor {opts.balance_factor}: a percentage above 100 (HAProxy suggests "
                          "125 to 200)")
    ids = server_ids(names)
    lines = [
        "# Written by `python -m deploy.haproxy.config` (deploy/haproxy/config.py): change the options there,",
        "# not this file. Model-affinity routing for model-replica; see docs/scaling.md.",
        "global",
        "    maxconn 2048",  # with two 64 KiB buffers per busy connection: at most 256 MiB of buffers
        f"    tune.bufsize {opts.bufsize}",
        # Soft stop (SIGUSR1, or `systemctl stop haproxy`): stop listening, let requests in flight finish.
        f"    hard-stop-after {opts.hard_stop_after}",
    ]
    if opts.stats_socket:
        lines.append(f"    stats socket {opts.stats_socket} mode 600 level admin")
    if opts.log_stdout:
        lines.append("    log stdout format raw local0 info")
    if opts.resolvers:
        lines += [
            "",
            "resolvers cluster",
            "    parse-resolv-conf",
            "    accepted_payload_size 8192",
            "    hold valid 5s",
            "    hold nx 5s",
            "    hold obsolete 5s",
        ]
    lines += [
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option http-keep-alive",
        "    timeout connect 2s",
        "    timeout client 60s",
        f"    timeout server {opts.timeout_server}",
        "    timeout http-request 10s",
        "    timeout queue 10s",
        # A refused or reset connection (a replica killed or stopping) and a 503 (not ready, draining, cache
        # saturated: the replica says "not me, not now") are replayed on the next replica on the ring.
        f"    retries {opts.retries}",
        # The whole request (up to tune.bufsize) is read before it goes out, so it can be replayed whole.
        "    option http-buffer-request",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response 503",
        "",
        "frontend models",
        f"    bind {opts.bind}",
        "    monitor-uri /lb-healthz",  # HAProxy's own liveness (200 while it runs), for probes
        # The model name: /v1/models/NAME (TF Serving's /v1/models/NAME:predict too), /v2/models/NAME/... and
        # /v2/repository/models/NAME/... (the Open Inference Protocol), else the `model` query parameter, else the
        # X-Model header (the last rule that finds one wins). Requests without one (GET /, /v1/models, /v2/health)
        # are spread round robin.
        "    http-request set-var(txn.model) path,field(4,/),field(1,:) if { path_beg /v1/models/ }",
        "    http-request set-var(txn.model) path,field(4,/) if { path_beg /v2/models/ }",
        "    http-request set-var(txn.model) path,field(5,/) if { path_beg /v2/repository/models/ }",
        "    http-request set-var(txn.model) url_param(model) if { url_param(model) -m found }",
        "    http-request set-var(txn.model) req.hdr(x-model) if { req.hdr(x-model) -m found }",
        "    default_backend replicas",
        "",
        "backend replicas",
    ]
    if opts.round_robin:
        lines.append("    balance roundrobin")
    else:
        lines += [
            "    balance hash var(txn.model)",
            "    hash-type consistent",
            f"    hash-balance-factor {opts.balance_factor}",
        ]
    lines += [
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
        # Which replica answered, for clients and tests; HAProxy adds it, the replica pays nothing.
        "    http-response set-header X-Replica %[srv_name]",
        # weight 100: 1,600 places per server on the ring, which spreads models more evenly than the default 16.
        f"    default-server check inter {opts.check_interval} fall {opts.fall} rise {opts.rise} weight 100",
    ]
    for s in opts.servers:
        extra = " resolvers cluster resolve-prefer ipv4 init-addr none" if opts.resolvers else ""
        lines.append(f"    server {s.name} {s.address} id {ids[s.name]}{extra}")
    return "\n".join(lines) + "\n"


def kubernetes_servers(count: int, statefulset: str, service: str, port: int) -> list[Server]:
    """The pods of a StatefulSet by their stable DNS names. Pods that do not exist (fewer replicas than `count`)
    do not resolve and stay out of rotation; scaling up to `count` needs no new configuration. The namespace
    and cluster domain come from HAProxy's environment (POD_NAMESPACE, CLUSTER_DOMAIN) when it starts."""
    return [Server(f"{statefulset}-{i}",
                   f'"{statefulset}-{i}.{service}.${{POD_NAMESPACE}}.svc.${{CLUSTER_DOMAIN}}:{port}"')
            for i in range(count)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.haproxy.config", description=__doc__.split("\n\n")[0])
    p.add_argument("--bind", default="127.0.0.1:8080", help="address HAProxy listens on (default 127.0.0.1:8080)")
    p.add_argument("--server", action="append", default=[], metavar="[NAME=]HOST:PORT",
                   help="a replica; repeat once per replica. The name fixes its place on the hash ring")
    p.add_argument("--kubernetes", type=int, metavar="N",
                   help="instead of --server: the first N pods of a StatefulSet, resolved through DNS")
    p.add_argument("--statefulset", default="replica", help="with --kubernetes: the StatefulSet's name")
    p.add_argument("--service", default="replica", help="with --kubernetes: its headless Service's name")
    p.add_argument("--port", type=int, default=8888, help="with --kubernetes: the replicas' port")
    p.add_argument("--balance-factor", type=int, default=200,
                   help="bounded load: a replica takes at most this percentage of the average requests in flight "
                        "before a model spills to the next replica (default 200)")
    p.add_argument("--round-robin", action="store_true", help="no model affinity (for comparison)")
    p.add_argument("--check-interval", default="2s", help="health check interval on /readyz (default 2s)")
    p.add_argument("--fall", type=int, default=2, help="failed checks before a replica is taken out (default 2)")
    p.add_argument("--rise", type=int, default=2, help="passed checks before it is put back (default 2)")
    p.add_argument("--timeout-server", default="60s", help="longest wait for a replica's answer (default 60s)")
    p.add_argument("--hard-stop-after", default="30s", help="longest drain on a soft stop (default 30s)")
    p.add_argument("--stats-socket", help="a Unix socket for HAProxy's runtime API (show servers state, drain)")
    p.add_argument("--no-log", action="store_true", help="no request log (default: one line per request on "
                   "standard output)")
    p.add_argument("-o", "--output", help="write here instead of standard output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.kubernetes is not None and args.server:
            raise ConfigError("give either --server or --kubernetes, not both")
        if args.kubernetes is not None:
            if args.kubernetes < 1:
                raise ConfigError(f"--kubernetes {args.kubernetes}: the most replicas the StatefulSet may have, >= 1")
            servers = kubernetes_servers(args.kubernetes, args.statefulset, args.service, args.port)
        else:
            servers = [parse_server(text, i) for i, text in enumerate(args.server, start=1)]
        text = render(Options(
            bind=args.bind, servers=servers, balance_factor=args.balance_factor, round_robin=args.round_robin,
            check_interval=args.check_interval, fall=args.fall, rise=args.rise, timeout_server=args.timeout_server,
            hard_stop_after=args.hard_stop_after, stats_socket=args.stats_socket, log_stdout=not args.no_log,
            resolvers=args.kubernetes is not None))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
