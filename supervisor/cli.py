"""The `replica` command: `replica serve SPEC` runs the supervisor, `replica validate SPEC` checks a spec.

It lives with the supervisor it starts, so that the core in replica/ (spec, layouts, disk tree) starts no
process and imports nothing from here.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from replica.project import apply_log_level
from replica.quantity import format_bytes, parse_quantity
from replica.spec import ApiSpec, SpecError
from supervisor.dependencies import DependencyError
from supervisor.settings import Settings, default_state_dir

log = logging.getLogger("replica")


def _env(flag: str, default):
    """`--poll-interval` reads REPLICA_POLL_INTERVAL when not given on the command line."""
    return os.environ.get("REPLICA_" + flag.upper().replace("-", "_"), default)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("model-replica")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="replica", description="Serve Cortex-style predictors over HTTP.")
    p.add_argument("--version", action="version", version=f"replica {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve one API of a spec")
    serve.add_argument("spec", type=Path)
    serve.add_argument("--api", default=_env("api", None), help="the API to serve when the file holds several")
    serve.add_argument("--host", default=_env("host", "127.0.0.1"), help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=int(_env("port", 8888)))
    serve.add_argument("--state-dir", type=Path, default=_env("state-dir", None),
                       help="the disk tree (default: under the user's cache directory)")
    serve.add_argument("--poll-interval", type=float, default=float(_env("poll-interval", 10)),
                       help="seconds between upstream polls (default 10)")
    serve.add_argument("--max-request-size", type=int, default=int(_env("max-request-size", 64 << 20)),
                       help="largest request body in bytes (default 64 MiB)")
    serve.add_argument("--log-format", choices=("text", "json"), default=_env("log-format", "text"))
    serve.add_argument("--s3-endpoint", default=_env("s3-endpoint", None),
                       help="an S3-compatible endpoint URL (default: AWS_ENDPOINT_URL or AWS)")
    serve.add_argument("--drain-timeout", type=float, default=float(_env("drain-timeout", 30)),
                       help="seconds in-flight requests get to finish on SIGTERM (default 30)")
    serve.add_argument("--heartbeat-timeout", type=float, default=float(_env("heartbeat-timeout", 0)),
                       help="/healthz fails once the watcher has not polled for this many seconds "
                            "(default: 4 poll intervals, at least 30)")
    serve.add_argument("--worker-timeout", type=float, default=float(_env("worker-timeout", 30)),
                       help="a worker whose main loop is stuck this many seconds is killed and replaced "
                            "(default 30)")
    serve.add_argument("--load-wait", type=float, default=float(_env("load-wait", 30)),
                       help="with model caching, seconds a request waits for its model to be fetched and loaded "
                            "before it answers 503 with Retry-After (default 30)")
    serve.add_argument("--load-timeout", type=float, default=float(_env("load-timeout", 600)),
                       help="seconds a predictor's load_model may run; past it the version is FAILED with that "
                            "reason and retried after a backoff, its load left behind (default 600)")
    serve.add_argument("--request-timeout", type=float, default=float(_env("request-timeout", 300)),
                       help="seconds a request may spend in the predictor; past it the client gets 504, and a "
                            "worker with half its request threads stuck so is replaced (default 300)")
    serve.add_argument("--worker-max-rss", default=_env("worker-max-rss", None),
                       help="a memory quantity (900Mi, 4Gi): a worker whose resident memory passes it is replaced, "
                            "its replacement ready before it stops taking requests (default: no bound)")
    serve.add_argument("--metrics-model-labels", choices=("all", "counters", "none"),
                       default=_env("metrics-model-labels", "all"),
                       help="which /metrics series carry the model and version: all (default), counters (not the "
                            "latency histograms), none (series for the whole replica only)")
    serve.add_argument("--no-access-log", dest="access_log", action="store_false",
                       default=_env("access-log", "1") not in ("0", "false", "no"),
                       help="no line per request in the log (REPLICA_ACCESS_LOG=0)")
    serve.add_argument("--header-timeout", type=float, default=float(_env("header-timeout", 10)),
                       help="seconds a request's head may take from its first byte; slower peers get 408 "
                            "(default 10)")
    serve.add_argument("--body-timeout", type=float, default=float(_env("body-timeout", 30)),
                       help="seconds a request's body may take after its head, and a response may wait for the "
                            "peer to read it (default 30)")
    serve.add_argument("--keep-alive", type=int, default=int(_env("keep-alive", 5)),
                       help="seconds an idle connection is kept open for its next request; 0 closes every "
                            "connection after its response (default 5)")
    serve.add_argument("--worker-connections", type=int, default=int(_env("worker-connections", 1000)),
                       help="connections one worker process holds; at the limit the longest-idle one is closed "
                            "to take a new one (default 1000)")
    serve.add_argument("--max-buffered-bytes", type=int, default=int(_env("max-buffered-bytes", 256 << 20)),
                       help="request body bytes one worker process holds in memory, all connections together; "
                            "past it the worker reads no more bodies until requests are served (default 256 MiB, "
                            "at least --max-request-size)")
    serve.add_argument("--download-stall-timeout", type=float, default=float(_env("download-stall-timeout", 30)),
                       help="a download that receives no data for this many seconds fails and is retried with "
                            "backoff; a slow one that keeps moving goes on (default 30)")
    serve.add_argument("--grpc-port", type=int, default=_env("grpc-port", None) or None,
                       help="also serve the Open Inference Protocol (KServe V2) over gRPC on this port, on the same "
                            "host as --port (default: off)")
    validate = sub.add_parser("validate", help="check a spec, its predictor file and its model paths")
    validate.add_argument("spec", type=Path)
    validate.add_argument("--api", default=_env("api", None))
    validate.add_argument("--s3-endpoint", default=_env("s3-endpoint", None))
    validate.add_argument("--load", action="store_true",
                          help="also download each model's served version and load it as a worker would")
    validate.add_argument("--state-dir", type=Path, default=_env("state-dir", None),
                          help="where `replica prepare` put the project's packages (default: as serve's)")
    prepare = sub.add_parser("prepare", help="run the project's dependencies.sh and install its requirements.txt "
                                             "(as root at install time, when the service cannot)")
    prepare.add_argument("spec", type=Path)
    prepare.add_argument("--api", default=_env("api", None))
    prepare.add_argument("--state-dir", type=Path, default=_env("state-dir", None),
                         help="the serving replica's state directory (default: as serve's)")
    return p


def main(argv: list[str] | None = None) -> int:
    from replica.logs import configure_logging

    args = _parser().parse_args(argv)
    configure_logging(getattr(args, "log_format", "text"))
    from replica.spec import load_spec
    from supervisor.preflight import checked

    try:
        api = load_spec(args.spec, args.api)
        project = _project_packages(args, api)
        if project is None:
            return 2
        api = checked(api, import_check=project is not _UNPREPARED)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "prepare":
        return 0
    if project is _UNPREPARED:
        print("note: the project's dependencies are not installed yet (replica prepare SPEC, or replica serve, "
              "installs them); the predictor's import is checked once they are")
    apply_log_level(api.predictor.log_level)
    if args.command == "validate":
        try:
            code = _validate(api, args.s3_endpoint, args.load)
            sys.stdout.flush()
            return code
        except BrokenPipeError:  # `replica validate SPEC | head`: the reader has what it wanted
            return _stdout_closed()
    for flag, value, ok, bound in (("--header-timeout", args.header_timeout, args.header_timeout > 0, "> 0"),
                                   ("--body-timeout", args.body_timeout, args.body_timeout > 0, "> 0"),
                                   ("--keep-alive", args.keep_alive, args.keep_alive >= 0, ">= 0"),
                                   ("--download-stall-timeout", args.download_stall_timeout,
                                    args.download_stall_timeout > 0, "> 0"),
                                   ("--load-timeout", args.load_timeout, args.load_timeout > 0, "> 0"),
                                   ("--request-timeout", args.request_timeout, args.request_timeout > 0, "> 0")):
        if not ok:
            print(f"error: {flag} must be {bound} seconds, got {value:g}", file=sys.stderr)
            return 2
    max_rss = None
    if args.worker_max_rss:
        try:
            max_rss = parse_quantity(args.worker_max_rss)
        except ValueError as e:
            print(f"error: --worker-max-rss: {e}", file=sys.stderr)
            return 2
        budget = api.predictor.cache_memory
        if budget is not None and max_rss <= budget:
            print(f"error: --worker-max-rss ({format_bytes(max_rss)}) must be above predictor.models.cache_memory "
                  f"({format_bytes(budget)}): the models alone may take that much; raise it", file=sys.stderr)
            return 2
    if args.worker_connections < 1:
        print(f"error: --worker-connections must be >= 1, got {args.worker_connections}", file=sys.stderr)
        return 2
    if args.max_buffered_bytes < args.max_request_size:
        print(f"error: --max-buffered-bytes ({args.max_buffered_bytes}) must be at least --max-request-size "
              f"({args.max_request_size}): one request's body must fit", file=sys.stderr)
        return 2
    if args.grpc_port is not None and not 0 < args.grpc_port < 65536:
        print(f"error: --grpc-port must be a TCP port (1-65535), got {args.grpc_port}", file=sys.stderr)
        return 2
    if args.grpc_port == args.port:
        print(f"error: --grpc-port and --port are both {args.port}: give gRPC a port of its own", file=sys.stderr)
        return 2
    settings = Settings(
        state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(api.name),
        host=args.host,
        port=args.port,
        poll_interval=args.poll_interval,
        max_request_size=args.max_request_size,
        log_format=args.log_format,
        s3_endpoint=args.s3_endpoint,
        drain_timeout=args.drain_timeout,
        heartbeat_timeout=args.heartbeat_timeout or max(30.0, 4 * args.poll_interval),
        worker_timeout=args.worker_timeout,
        load_wait=args.load_wait,
        load_timeout=args.load_timeout,
        request_timeout=args.request_timeout,
        worker_max_rss=max_rss,
        metrics_model_labels=args.metrics_model_labels,
        access_log=args.access_log,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive=args.keep_alive,
        worker_connections=args.worker_connections,
        max_buffered_bytes=args.max_buffered_bytes,
        download_stall_timeout=args.download_stall_timeout,
        grpc_port=args.grpc_port,
    )
    from supervisor.arbiter import Arbiter, StartupError

    try:
        status = Arbiter(api, settings).run()
    except StartupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Exit now, download threads included: the state-directory lock is released by this exit and not before,
    # so a replica started next never finds a download of this one still writing.
    logging.shutdown()
    sys.stderr.flush()
    os._exit(status)


_UNPREPARED = Path("unprepared")  # validate: the project has dependencies that are not installed yet


def _project_packages(args, api: ApiSpec) -> Path | str | None:
    """Set up the project's own dependencies (supervisor/dependencies.py) for serve and prepare, or find them
    for validate, and point the workers (and the import check) at them. "" when the project has none, None
    after printing why they cannot be set up, `_UNPREPARED` for validate when they are not installed yet."""
    from supervisor import dependencies

    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir(api.name)
    if args.command == "validate":
        problems = dependencies.problems(api)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        if problems:
            return None
        packages = dependencies.prepared(api, state_dir)
        if packages is None:
            return _UNPREPARED if dependencies.key(api) else ""
    else:
        try:
            packages = dependencies.prepare(api, state_dir, log=lambda line: print(line, file=sys.stderr))
        except DependencyError as e:
            print(f"error: {e}", file=sys.stderr)
            return None
        if packages is None:
            return ""
    os.environ[dependencies.ENV_VAR] = str(dependencies.site_dir(packages))
    return packages


def _stdout_closed() -> int:
    """The reader of our output went away: point stdout at /dev/null so the interpreter's last flush does not
    fail again, and exit as a command killed by SIGPIPE would (128 + 13)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _validate(api: ApiSpec, s3_endpoint: str | None, load: bool = False) -> int:
    """List every model root once and report each model's versions and problems; with `load`, download each
    model's served version and load it (supervisor/trial_load.py)."""
    from supervisor.catalogue import Catalogue
    from supervisor.s3_client import make_s3_client
    from supervisor.upstream import open_upstream

    upstreams = [(s, open_upstream(s.url, lambda: make_s3_client(s3_endpoint))) for s in api.predictor.sources]
    catalogue = Catalogue(api.predictor, upstreams)
    catalogue.refresh()
    bad = bool(catalogue.root_errors)
    loader = None
    print(f"API {api.name}: {api.predictor.type} predictor, {len(catalogue.models)} model(s)")
    for url, err in catalogue.root_errors.items():
        print(f"  error: {url}: {err}")
    for name, entry in sorted(catalogue.models.items()):
        if entry.listing.error:
            bad = True
            print(f"  model {name}: error: {entry.listing.error}")
            continue
        for v in entry.listing.all_versions:  # in version order
            state = "ok" if v.error is None else f"error: {v.error}"
            bad |= v.error is not None
            print(f"  model {name} version {v.version}: {len(v.files)} file(s), {state}")
        if load:
            if loader is None:
                from supervisor.trial_load import model_loader

                loader = model_loader(api)
            from supervisor.trial_load import try_load

            outcome = try_load(entry, name, loader)
            bad |= "loaded in" not in outcome
            print(f"  model {name}: {outcome}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
