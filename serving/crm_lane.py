"""The CRM's batch scoring, in a process of its own beside each service worker.

Scoring a thousand customers (read their features, apply the storefront's recent purchases, run
the churn or LTV model, explain each score) is a few hundred milliseconds of Python. In a thread
of the worker it would hold the interpreter's lock against the event loop, and every storefront
request behind it would wait; here it runs in another process, at a lower CPU priority than the
worker, and the worker only passes the validated request in and the finished JSON answer out.

The lane holds its own copy of the customer models (not the recommender) and its own readers of
the online store. It loads the current champions when it starts and again on every reload; an
answer names the versions that produced it. If the lane dies, the next call starts a new one and
is told to retry (503), never answered with a half-made result.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from typing import Any

from patron.serving.errors import LaneUnavailable
from patron.settings import PatronSettings

log = logging.getLogger(__name__)

CUSTOMER_KINDS = ("churn", "ltv")

# ------------------------------------------------------------------------------ in the lane

_runtime: Any = None


def _start(settings_json: str, worker_pid: int) -> None:
    """The lane process's initializer: one numeric thread, private files, the customer models, and
    a watch on the worker."""
    global _runtime
    from threadpoolctl import threadpool_limits

    from patron.serving.runtime import Runtime

    threading.Thread(target=_follow, args=(worker_pid,), name="patron-lane-watch", daemon=True).start()
    os.umask(0o077)
    # Below the storefront: when both want the CPU, the requests of shoppers go first.
    os.nice(10)
    threadpool_limits(limits=1)
    _runtime = Runtime(PatronSettings.model_validate_json(settings_json), kinds=CUSTOMER_KINDS)
    _runtime.reload()


def _follow(worker_pid: int, every: float = 0.5) -> None:
    """End the lane once its worker is gone. A worker that exits cleanly shuts its lane down, but one
    killed outright (out of memory, SIGKILL) cannot, and the lane, holding its own copy of the
    customer models, would outlive it. The worker is this process's parent: when the parent changes
    (the orphan is taken over by another process), the worker has gone."""
    while os.getppid() == worker_pid:
        time.sleep(every)
    log.warning("the service worker of this CRM lane has gone; the lane stops")
    os._exit(0)


def _reload() -> tuple[bool, str, dict[str, str]]:
    ok, message, versions, _ = _runtime.reload()
    return ok, message, versions


def _ready() -> bool:
    return _runtime.champions is not None and _runtime.store_ok()


def _call(endpoint: str, body: str) -> bytes:
    """Score one validated request; the answer as JSON bytes. The service's own errors (not ready,
    store unavailable) travel back as themselves."""
    from patron.serving import logic
    from patron.serving import schemas as S

    request = S.ENDPOINTS[endpoint].request.model_validate_json(body)
    answer = {"/churn": logic.churn, "/ltv": logic.ltv}[endpoint](_runtime, request)
    return answer.model_dump_json().encode()


# ------------------------------------------------------------------------- in the worker


class CrmLane:
    """The worker's handle on its lane process."""

    ENDPOINTS = ("/churn", "/ltv")

    def __init__(self, settings: PatronSettings) -> None:
        # the lane needs no API keys: they stay in this process
        public = settings.model_copy(update={"storefront_keys": "", "crm_keys": "", "admin_keys": ""})
        self._settings_json = public.model_dump_json()
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self.versions: dict[str, str] = {}
        self.is_ready = False  # kept current by start(), ready() and failures, for the readiness probe

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start, initargs=(self._settings_json, os.getpid()))
            return self._pool

    def _broken(self, pool: ProcessPoolExecutor) -> None:
        self.is_ready = False
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)
        log.error("the CRM lane stopped; a new one starts with the next call")

    def start(self) -> bool:
        """Start the lane and load its models (blocking); whether it is ready."""
        return self.ready()

    def ready(self) -> bool:
        pool = self._executor()
        try:
            self.is_ready = bool(pool.submit(_ready).result())
        except BrokenExecutor:
            self._broken(pool)
        return self.is_ready

    def reload(self) -> tuple[bool, str]:
        pool = self._executor()
        try:
            ok, message, versions = pool.submit(_reload).result()
        except BrokenExecutor:
            self._broken(pool)
            return False, "the CRM lane stopped and is starting again"
        if ok:
            self.versions = versions
        return ok, message

    async def call(self, endpoint: str, body: str) -> bytes:
        pool = self._executor()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, _call, endpoint, body)
        except BrokenExecutor as exc:
            self._broken(pool)
            threading.Thread(target=self.start, name="patron-lane", daemon=True).start()
            raise LaneUnavailable("the CRM lane stopped and is starting again") from exc

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
