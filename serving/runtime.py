"""What the service holds: the champions, the readers of the online store and the event log.

Loading builds a complete new :class:`~patron.serving.champions.Champions` object and only then
replaces the old one (a single reference swap): requests in flight keep the object they started
with, and a model that fails to load never replaces one that works.
"""

from __future__ import annotations

import atexit
import datetime as dt
import gc
import logging
import threading
import time

from patron.features.catalog import CHURN_SERVICE
from patron.features.events import RECENT_VIEW, EventLog, publish
from patron.serving.champions import ALL_KINDS, Champions, ModelRefused, champion_versions, load_champions
from patron.serving.errors import NotReady
from patron.serving.online import OnlineFeatures, RecentEvents
from patron.settings import PatronSettings

log = logging.getLogger(__name__)




_THAW: list[bool] = []


def _thaw_at_exit() -> None:
    """Frozen objects are never collected, not even when the interpreter exits: DuckDB's bindings
    then report every object of theirs still reachable from the models as leaked. Thawed at exit,
    the last collection frees them."""
    if not _THAW:
        atexit.register(gc.unfreeze)
        _THAW.append(True)


def _reader(store) -> OnlineFeatures:
    try:
        return OnlineFeatures(store)
    except Exception as exc:  # the registry is missing, or holds other definitions
        raise ModelRefused(
            f"the feature store does not provide {CHURN_SERVICE} ({type(exc).__name__}): run `patron features apply` "
            "and `patron features materialize`, or the pipeline"
        ) from exc


class Runtime:
    """The service's state: swapped whole on reload, read without locks by requests."""

    def __init__(self, settings: PatronSettings, kinds: tuple[str, ...] = ALL_KINDS) -> None:
        from patron.features.store import open_store

        self.settings = settings
        self.kinds = kinds
        paths = settings.paths()
        # the service reads the online store only: its offline store (and so Spark) is never used
        self.store = open_store(paths.feature_repo, settings.online_store, settings.redis_url)
        self.features: OnlineFeatures | None = None  # set by the first successful reload
        self.champions: Champions | None = None
        self.last_error: str | None = None
        self._reload_lock = threading.Lock()
        self._reloads = 0  # completed reloads
        self._last_reload: tuple[bool, str, dict[str, str], dict[str, str]] | None = None
        self._store_ok = (0.0, True)
        self._events: EventLog | None = None
        self._events_lock = threading.Lock()
        self._data_start: dt.datetime | bool | None = None
        self._recent: RecentEvents | None = None
        self._recent_retry = 0.0
        self.publish_failures = 0

    @property
    def events(self) -> EventLog:
        """The storefront's event log, opened on first use (the CRM lane never writes events)."""
        with self._events_lock:
            if self._events is None:
                self._events = EventLog(self.settings.paths().events_log)
        return self._events

    def recent(self) -> RecentEvents | None:
        """The reader of pushed event state; None while the feature store lacks the view (looked
        for again at most every 30 s)."""
        if self._recent is None and time.monotonic() >= self._recent_retry:
            try:
                self._recent = RecentEvents(self.store)
            except Exception:  # definitions from before the event path: `patron features apply` adds the view
                self._recent_retry = time.monotonic() + 30.0
                log.warning("the feature store has no %s view: storefront events are stored but not applied; "
                            "run `patron features apply`", RECENT_VIEW)
        return self._recent

    def publish(self, customers: list[int] | None = None) -> bool:
        """Push the online state of customers with new events (all pending ones by default)."""
        if self.recent() is None:
            return False
        try:
            publish(self.store, self.events, customers)
            return True
        except Exception as exc:  # the online store is down: the marks stay, the publisher retries
            self.publish_failures += 1
            log.warning("publishing event state failed: %s: %s", type(exc).__name__, exc)
            return False

    def data_start(self) -> dt.datetime | None:
        """The time of the shop's first ingested order (looked up once): no event may be older."""
        if self._data_start is None:
            from patron.features.ingest import OrderStore

            self._data_start = OrderStore(self.settings.paths().data).first_purchase() or False
        return self._data_start or None

    def require(self) -> Champions:
        champions = self.champions
        if champions is None:
            raise NotReady(self.last_error or "the models are still loading")
        return champions

    def reload(self) -> tuple[bool, str, dict[str, str], dict[str, str]]:
        """Load the current champions; keep serving the old ones if that fails.

        Reloads do not pile up: a call that arrives while another runs waits for it and gives its
        answer; and when the champions are the ones already loaded, nothing is loaded again."""
        arrived = self._reloads
        with self._reload_lock:
            if self._reloads != arrived and self._last_reload is not None:
                return self._last_reload
            result = self._reload()
            self._reloads += 1
            self._last_reload = result
            return result

    def _reload(self) -> tuple[bool, str, dict[str, str], dict[str, str]]:
        previous = dict(self.champions.versions) if self.champions else {}
        try:
            if self.features is None:
                self.features = _reader(self.store)
            if previous and champion_versions(self.settings, self.kinds) == previous:
                return True, "already serving the champions", previous, previous
            fresh = load_champions(self.settings, self.store, self.kinds)
        except ModelRefused as exc:
            self.last_error = str(exc)
            log.error("reload refused: %s", exc)
            kept = "; still serving " + ", ".join(f"{k} v{v}" for k, v in previous.items()) if previous else ""
            return False, f"{exc}{kept}", previous, previous
        self.champions = fresh  # one reference swap: in-flight requests keep the old object
        self.last_error = None
        # The models are some 600,000 long-lived objects; left in the collector's oldest
        # generation, every full collection walked them all and stalled every request for
        # about 0.3 s. Frozen, they are never scanned; thawed on the next reload so that the
        # replaced models can still be freed.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        _thaw_at_exit()
        changed = {k: v for k, v in fresh.versions.items() if previous.get(k) != v}
        message = ("loaded " + ", ".join(f"{k} v{v}" for k, v in changed.items())) if changed else "already serving the champions"
        log.info("reload: %s", message)
        return True, message, dict(fresh.versions), previous

    def reader(self) -> OnlineFeatures:
        if self.features is None:
            raise NotReady(self.last_error or "the feature store is not open yet")
        return self.features

    def store_ok(self, max_age: float = 1.0) -> bool:
        """Whether the online store answered recently (probed at most once per ``max_age`` seconds)."""
        if self.features is None:
            return False
        checked, ok = self._store_ok
        now = time.monotonic()
        if now - checked > max_age:
            ok = self.features.ping()
            self._store_ok = (now, ok)
        return ok
