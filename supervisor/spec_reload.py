"""SIGHUP: check the spec file again and, when it is valid, serve it without a failed request.

An invalid spec, or one that changes what only a restart can change, is logged and the running spec keeps
serving. A valid one is written as JSON for the workers (they never read the spec file; replica/spec_codec.py),
the watcher follows its model
paths, and the workers are replaced one at a time (supervisor/rolling.py); an aborted roll goes back to the
previous spec.

Reloads never overlap, and none is lost: a SIGHUP that arrives during a reload schedules one more reload,
which reads the spec file again once the current one ends; any number of signals during a reload collapse
into that one follow-up. The spec served in the end is therefore the file as it was at the last signal.
"""

from __future__ import annotations

import enum
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from replica.disktree import DiskTree
from replica.spec import ApiSpec, SpecError
from replica.spec_codec import spec_to_json
from supervisor.catalogue import Catalogue
from supervisor.preflight import load_checked
from supervisor.rolling import RollAborted, restart_only_changes, roll_workers
from supervisor.sdnotify import Notifier
from supervisor.settings import Settings
from supervisor.upstream import open_upstream
from supervisor.watcher import Watcher

log = logging.getLogger(__name__)

WORKER_READY_TIMEOUT = 600.0  # a reload gives each new worker this long to load its models


class Ask(enum.Enum):
    """What a reload request leads to."""

    START = "start"  # nothing was running: start a reload now
    QUEUED = "queued"  # a reload is running: one more follows it
    COALESCED = "coalesced"  # a follow-up was already queued: this request is folded into it


class ReloadRequests:
    """The coalescing of reload requests, on its own so it can be reasoned about (and tested) apart from
    threads and signals: at most one reload runs, at most one waits, and a request is never dropped.

    A follow-up reads the spec file after every request it stands for was made, so one follow-up serves
    them all; running one per signal would only replace every worker again for nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = False
        self._again = False

    @property
    def running(self) -> bool:
        return self._running

    def request(self) -> Ask:
        """A SIGHUP arrived: say whether to start a reload now or whether the running one will be followed."""
        with self._lock:
            if not self._running:
                self._running = True
                return Ask.START
            if self._again:
                return Ask.COALESCED
            self._again = True
            return Ask.QUEUED

    def finished(self) -> bool:
        """A reload ended: True when another must run now (and it is then under way), False when idle.

        One lock guards both this and `request`, so a request made while a reload ends is either seen here
        or starts a reload of its own; it cannot fall between the two."""
        with self._lock:
            if self._again:
                self._again = False
                return True
            self._running = False
            return False


class SpecReloader:
    """The running spec and its reloads, owned by the Arbiter.

    The arbiter's main loop calls `request` for each SIGHUP; the reloads run in a thread of their own (a roll
    waits for workers to load their models), one at a time. `gunicorn` returns the running gunicorn, or None
    between a death and its restart (the restarted one then starts from the spec written here)."""

    def __init__(self, api: ApiSpec, settings: Settings, tree: DiskTree, watcher: Watcher, notifier: Notifier,
                 stop_event: threading.Event, gunicorn: Callable[[], subprocess.Popen | None]):
        self.api = api
        self.settings = settings
        self.tree = tree
        self.watcher = watcher
        self.notifier = notifier
        self.stop_event = stop_event
        self.gunicorn = gunicorn
        self.requests = ReloadRequests()
        self._thread: threading.Thread | None = None

    @property
    def spec_json(self) -> Path:
        return self.tree.run / "spec.json"

    def write_spec(self, api: ApiSpec) -> None:
        """The parsed spec every worker starts from: workers never read the spec file themselves. JSON, not a
        pickle, so the file can at worst describe another spec, never run code in a worker."""
        tmp = self.spec_json.with_name("spec.json.tmp")
        tmp.write_text(spec_to_json(api))
        os.replace(tmp, self.spec_json)

    def request(self) -> None:
        """Handle one SIGHUP: start a reload, or have the running one followed by another (said once)."""
        ask = self.requests.request()
        if ask is Ask.START:
            log.info("received SIGHUP: checking %s", self.api.spec_file)
            self.notifier.notify("RELOADING=1")
            self._thread = threading.Thread(target=self._run, name="reload", daemon=True)
            self._thread.start()
        elif ask is Ask.QUEUED:
            log.info("received SIGHUP while a reload is in progress; %s is read again once it ends",
                     self.api.spec_file)

    def _run(self) -> None:
        """Reload until no request is left. An unexpected error ends that reload, never the ones after it."""
        try:
            while True:
                try:
                    self._reload_spec()
                except Exception:
                    log.exception("reload failed unexpectedly")
                if not self.requests.finished():
                    return
                if self.stop_event.is_set():
                    return
                log.info("reloading again for the SIGHUP received meanwhile: checking %s", self.api.spec_file)
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
        old, old_catalogue = self.api, self.watcher.catalogue
        if new.predictor.sources != old.predictor.sources:
            self._follow_sources(new)
        self.api = new
        self.write_spec(new)
        gunicorn = self.gunicorn()
        if gunicorn is None:
            log.info("reload done: the next gunicorn starts with the new spec")
            return

        def restore() -> None:
            """Back to the previous spec, and to its model paths: the workers it restarts look for its models."""
            self.api = old
            self.write_spec(old)
            self.watcher.catalogue = old_catalogue

        try:
            n = roll_workers(gunicorn.pid, self.tree.workers_dir, WORKER_READY_TIMEOUT, self.stop_event,
                             restore)
        except RollAborted as e:
            restore()
            log.error("reload aborted, back to the previous spec: %s", e)
            return
        log.info("reload done: %d worker(s) serve the new spec", n)

    def _follow_sources(self, new: ApiSpec) -> None:
        """Point the watcher at the new model paths, and wait for a pass over them so new workers find them.

        The new catalogue is listed once before it replaces the old one, so the models in both specs stay
        declared throughout (an empty catalogue would answer "not upstream" for them until the next pass);
        while one of its roots has never listed, it keeps declaring the old catalogue's models that root may
        hold, so an upstream error at that moment removes nothing either."""
        settings = self.settings
        upstreams = [(s, open_upstream(s.url, settings.s3_client_factory, settings.s3_download_client_factory))
                     for s in new.predictor.sources]
        for _, upstream in upstreams:
            upstream.on_page = self.watcher.alive
        catalogue = Catalogue(new.predictor, upstreams, previous=self.watcher.catalogue)
        catalogue.refresh()
        self.watcher.catalogue = catalogue
        deadline = time.monotonic() + max(30.0, 3 * self.settings.poll_interval)
        while (self.watcher.synced_catalogue is not catalogue and time.monotonic() < deadline
               and not self.stop_event.is_set()):
            time.sleep(0.1)
        # The pass only starts its downloads; give them what is left of the deadline, so that new workers
        # mostly find the new models on disk (a slow one is picked up by the workers when it lands).
        left = deadline - time.monotonic()
        if left > 0 and not self.stop_event.is_set():
            self.watcher.wait_for_downloads(left)
