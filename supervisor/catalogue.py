"""The catalogue: which models and versions upstream holds, declared from one listing per root per poll.

Like a TF Serving Source it only declares what should exist; the watcher reconciles the disk tree with it.
A root whose listing fails keeps its previous declaration, so an outage never looks like a removal. A catalogue
that replaces another (a reload changed the model roots) starts from the previous one's declaration: until all
of its roots have listed, it keeps declaring the previous models that an unlisted root may hold.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from replica.layout import ModelListing, build_model, group_models_dir, relative_to
from replica.spec import ModelSource, PredictorSpec
from supervisor.upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class CatalogueEntry:
    """A model as declared upstream, with where its files live. Compared by identity: an unchanged model keeps
    its entry from one listing to the next (see `Catalogue`), so "the same object" means "nothing changed"."""

    listing: ModelListing
    upstream: Upstream
    prefix: str  # the model root relative to the upstream root ("" or "child/")
    signature_key: str | None
    digest: int  # of the model's listed objects


class Catalogue:
    def __init__(self, predictor: PredictorSpec, upstreams: list[tuple[ModelSource, Upstream]],
                 allow_inferentia: bool = False, previous: Catalogue | None = None):
        """`previous`: the catalogue this one replaces. Its models stay declared until the roots that may hold
        them have listed, so a model in both specs never looks removed or "not upstream" in between."""
        self.predictor = predictor
        self.roots = upstreams
        self.allow_inferentia = allow_inferentia
        self._carried: dict[str, CatalogueEntry] = dict(previous.models) if previous is not None else {}
        self.models: dict[str, CatalogueEntry] = dict(self._carried)
        self.root_errors: dict[str, str] = {}  # upstream url -> last listing error
        # by root index, not url: two `paths` entries may share a model_path (one model under two names)
        self._by_root: dict[int, dict[str, CatalogueEntry]] = {}
        self.list_calls = 0
        self.last_success: float | None = None
        self._logged_invalid: set[tuple[str, int | None, str]] = set()

    @property
    def complete(self) -> bool:
        """Every root has been listed successfully at least once and none failed on the last refresh."""
        return not self.root_errors and len(self._by_root) == len(self.roots)

    def refresh(self) -> None:
        """List every root once; a failing root keeps its previous models and records its error."""
        for index, (source, upstream) in enumerate(self.roots):
            self.list_calls += 1
            try:
                objects = upstream.list()
            except UpstreamError as e:
                if self.root_errors.get(upstream.url) != str(e):
                    if index in self._by_root:
                        log.warning("listing failed, keeping the previous state of %s: %s", upstream.url, e)
                    else:
                        log.error("%s; none of its models can be served until it lists", e)
                self.root_errors[upstream.url] = str(e)
                continue
            except Exception as e:  # an unexpected error must not look like an empty bucket either
                log.exception("listing %s failed unexpectedly", upstream.url)
                self.root_errors[upstream.url] = f"{type(e).__name__}: {e}"
                continue
            if upstream.url in self.root_errors:
                log.info("listing %s works again", upstream.url)
                self.root_errors.pop(upstream.url)
            self._by_root[index] = self._declare(index, source, upstream, objects)
        models: dict[str, CatalogueEntry] = {}
        for root in self._by_root.values():
            for name, entry in root.items():
                models.setdefault(name, entry)  # `paths` names are unique; a `dir` child cannot shadow them
        self._carry(models)
        self.models = models
        self._log_invalid()
        if not self.root_errors:
            self.last_success = time.time()

    def _carry(self, models: dict[str, CatalogueEntry]) -> None:
        """Add the previous catalogue's models that a root never listed yet may hold: any name for a `dir`
        root, its own name for a `paths` root. Once every root has listed, nothing is carried any more."""
        if not self._carried:
            return
        unlisted = [source for index, (source, _) in enumerate(self.roots) if index not in self._by_root]
        if not unlisted:
            self._carried = {}
            return
        any_name = any(source.name is None for source in unlisted)
        names = {source.name for source in unlisted}
        for name, entry in self._carried.items():
            if name not in models and (any_name or name in names):
                models[name] = entry

    def _log_invalid(self) -> None:
        """Log each invalid model or version once per reason (its reason also shows in /v1/models)."""
        current = set()
        for name, entry in self.models.items():
            if entry.listing.error:
                current.add((name, None, entry.listing.error))
            for v in entry.listing.all_versions:
                if v.error:
                    current.add((name, v.version, v.error))
        for name, version, error in sorted(current - self._logged_invalid, key=str):
            log.warning("model %s%s is invalid and not served: %s", name,
                        f" version {version}" if version is not None else "", error)
        self._logged_invalid = current

    def _declare(self, index: int, source: ModelSource, upstream: Upstream, objects) -> dict[str, CatalogueEntry]:
        """The root's models. A model whose objects did not change keeps its previous entry (the same object),
        so neither its layout checks nor the state feed are redone each poll."""
        before = self._by_root.get(index, {})
        if source.name is not None:
            return {source.name: self._entry(before.get(source.name), source, upstream, source.name, "", objects)}
        return {child: self._entry(before.get(child), source, upstream, child, f"{child}/", child_objects)
                for child, child_objects in sorted(group_models_dir(objects).items())}

    def _entry(self, before: CatalogueEntry | None, source: ModelSource, upstream: Upstream, name: str,
               prefix: str, objects) -> CatalogueEntry:
        """`objects` as listed, keys relative to the root; the model's own keys start after `prefix`."""
        digest = hash(tuple(objects))
        if before is not None and before.digest == digest:
            return before
        listing = build_model(name, self.predictor.type, relative_to(prefix, objects), self.allow_inferentia)
        return CatalogueEntry(listing, upstream, prefix, source.signature_key, digest)
