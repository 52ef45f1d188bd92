"""SIGHUP: check the spec file again and, when it is valid, serve it without a failed request.

An invalid spec, or one that changes what only a restart can change, is logged and the running spec keeps
serving. A valid one is written as JSON for the workers (they never read the spec file; replica/spec_codec.py),
the watcher follows its model
paths, and the workers are replaced one at a time (supervisor/rolling.py); an aborted roll goes back to the
previous spec.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from replica.spec import ApiSpec, SpecError
from replica.spec_codec import spec_to_json
from supervisor.catalogue import Catalogue
from supervisor.preflight import load_checked
from supervisor.rolling import RollAborted, restart_only_changes, roll_workers
from supervisor.upstream import open_upstream

log = logging.getLogger(__name__)

WORKER_READY_TIMEOUT = 600.0  # a reload gives each new worker this long to load its models


class SpecReload:
    """Mixed into the Arbiter, which provides `api`, `settings`, `tree`, `watcher`, `catalogue`, `gunicorn`,
    `notifier`, `stop_event` and `_reload_thread`."""

    @property
    def spec_json(self) -> Path:
        return self.tree.run / "spec.json"

    def _write_spec(self, api: ApiSpec) -> None:
        """The parsed spec every worker starts from: workers never read the spec file themselves. JSON, not a
        pickle, so the file can at worst describe another spec, never run code in a worker."""
        tmp = self.spec_json.with_name("spec.json.tmp")
        tmp.write_text(spec_to_json(api))
        os.replace(tmp, self.spec_json)

    def _start_reload(self) -> None:
        if self._reload_thread is not None and self._reload_thread.is_alive():
            log.warning("received SIGHUP while a reload is in progress; send it again once that one is done")
            return
        log.info("received SIGHUP: checking %s", self.api.spec_file)
        self.notifier.notify("RELOADING=1")
        self._reload_thread = threading.Thread(target=self._reload, name="reload", daemon=True)
        self._reload_thread.start()

    def _reload(self) -> None:
        try:
            self._reload_spec()
        finally:
            self.notifier.notify("READY=1")

    def _reload_spec(self) -> None:
        """Check the spec file again; if valid, follow its model paths and replace the workers one at a time."""
        try:
            new = load_checked(self.api.spec_file, self.api.name)
        except SpecError as e:
            log.error("reload refused, the running spec keeps serving: %s", " ".join(str(e).split()))
            return
        blocked = restart_only_changes(self.api.predictor, new.predictor)
        if blocked:
            log.error("reload refused, the running spec keeps serving: %s changed, which takes a restart "
                      "(systemctl restart replica)", ", ".join(blocked))
            return
        old = self.api
        if new.predictor.sources != old.predictor.sources:
            self._follow_sources(new)
        self.api = new
        self._write_spec(new)
        gunicorn = self.gunicorn
        if gunicorn is None:
            log.info("reload: the next gunicorn starts with the new spec")
            return

        def restore() -> None:
            self.api = old
            self._write_spec(old)

        try:
            n = roll_workers(gunicorn.pid, self.tree.workers_dir, WORKER_READY_TIMEOUT, self.stop_event,
                             restore)
        except RollAborted as e:
            restore()
            log.error("reload aborted, back to the previous spec: %s", e)
            return
        log.info("reload done: %d worker(s) serve the new spec", n)

    def _follow_sources(self, new: ApiSpec) -> None:
        """Point the watcher at the new model paths and wait for its next pass, so new workers find them."""
        upstreams = [(s, open_upstream(s.url, self.settings.s3_client_factory)) for s in new.predictor.sources]
        for _, upstream in upstreams:
            upstream.on_page = self.watcher.alive
        self.catalogue = Catalogue(new.predictor, upstreams)
        passed = self.watcher.last_pass
        self.watcher.catalogue = self.catalogue
        deadline = time.monotonic() + max(30.0, 3 * self.settings.poll_interval)
        while self.watcher.last_pass == passed and time.monotonic() < deadline and not self.stop_event.is_set():
            time.sleep(0.1)
