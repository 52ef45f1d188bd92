"""Render the replica's systemd units from `scripts/replica.service`: the single service, or the template
unit `replica@.service` for several replicas on one host (one instance per port: `replica@8001.service`).

The template is the single unit with the per-replica places made per instance (`%i`, the port): the port
itself, the state directory `/var/lib/replica/PORT`, the runtime directory, an instance's own environment
file read after the shared one. One source, so the two can never drift apart.

    python -m deploy.systemd --prefix /opt/replica --spec /etc/replica/api.yaml --user replica \\
        [--template] > replica@.service
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "scripts" / "replica.service"

HEADER = """\
# systemd template unit for several model-serving replicas on one host, one instance per port:
# replica@8001.service, replica@8002.service, ... (`make install-replicas PORTS="8001 8002"`). Each instance
# has its own state directory (/var/lib/replica/PORT) and runtime directory; settings shared by every instance
# live in /etc/replica/replica.env, one instance's own in /etc/replica/replica-PORT.env (read after it).
"""

# (line in the single unit, its per-instance form)
PER_INSTANCE = (
    ("Description=Model-serving replica (@SPEC@)", "Description=Model-serving replica on port %i (@SPEC@)"),
    ("EnvironmentFile=-/etc/replica/replica.env",
     "EnvironmentFile=-/etc/replica/replica.env\nEnvironmentFile=-/etc/replica/replica-%i.env"),
    ("Environment=REPLICA_STATE_DIR=/var/lib/replica", "Environment=REPLICA_STATE_DIR=/var/lib/replica/%i"),
    ("ExecStart=@PREFIX@/.venv/bin/replica serve @SPEC@", "ExecStart=@PREFIX@/.venv/bin/replica serve @SPEC@ --port %i"),
    ("StateDirectory=replica", "StateDirectory=replica/%i"),
    ("RuntimeDirectory=replica", "RuntimeDirectory=replica-%i"),
    ("WorkingDirectory=/var/lib/replica", "WorkingDirectory=/var/lib/replica/%i"),
    ("ReadWritePaths=/var/lib/replica", "ReadWritePaths=/var/lib/replica/%i"),
)


def render(prefix: str, spec: str, user: str, template: bool = False, source: str | None = None) -> str:
    text = SOURCE.read_text() if source is None else source
    if template:
        lines = text.splitlines()
        for old, new in PER_INSTANCE:
            if lines.count(old) != 1:
                raise ValueError(f"{SOURCE}: expected the line {old!r} once")
            lines[lines.index(old)] = new
        body = "\n".join(lines)
        body = body[body.index("[Unit]"):]  # the single unit's own header comment gives way to the template's
        text = HEADER + body + "\n"
    return text.replace("@PREFIX@", prefix).replace("@SPEC@", spec).replace("@USER@", user)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--template", action="store_true", help="the template unit replica@.service")
    args = ap.parse_args(argv)
    sys.stdout.write(render(args.prefix, args.spec, args.user, args.template))
    return 0


if __name__ == "__main__":
    sys.exit(main())
