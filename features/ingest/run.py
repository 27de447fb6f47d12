"""Ingesting files: check every header first, then read, classify and commit one file at a time."""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from patron.faults import crash_point
from patron.features.ingest.classify import classify
from patron.features.ingest.ledger import OrderStore, day_of
from patron.features.ingest.read import RawFrame, find_files, read_raw, validate_header
from patron.features.ingest.schema import FileReport, IngestReport
from patron.rules import LINE_CLASSES, Plausibility

HELD_LINE_IDS = 20_000_000  # line ids an ingest run keeps in memory to recognise lines committed before (8 bytes each)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ingest(
    sources: Sequence[Path],
    data_dir: Path,
    *,
    plausible: Plausibility = Plausibility(),
    batch_rows: int = 400_000,
    progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Ingest files or folders of raw exports; see the module docstring for the guarantees.

    Every file's header is checked before anything is written, so a run with a malformed file
    changes nothing. A file that fails later (truncated, corrupt) is refused whole; files before
    it stay committed, and the error says which file. Files are read and classified in batches
    (one vectorised pass for many small daily files) but committed one by one.
    """
    files = find_files(sources)
    for path in files:
        validate_header(path)
    store = OrderStore(data_dir)
    report = IngestReport()
    with store.lock():
        store.recover()
        store.migrate_line_ids()
        pending: list[tuple[Path, str, RawFrame]] = []
        pending_rows = 0
        committed = _CommittedIds(store)
        with _ReadAhead(files, store, max_rows=batch_rows) as ahead:
            for path, digest, raw in ahead:
                # checked again here: the same bytes may have been committed by this run since they were read
                record = store.file_record(digest)
                if record is None and any(d == digest for _, d, _ in pending):
                    record = {}  # the same bytes twice in one run: the second copy is a re-ingest
                if record is not None:
                    _flush(store, committed, pending, report, plausible, progress)
                    pending, pending_rows = [], 0
                    record = record or store.file_record(digest) or {}
                    report.add(
                        FileReport(
                            path=str(path),
                            sha256=digest,
                            status="already_ingested",
                            rows_in=record.get("rows_in", 0),
                            rows_written=0,
                            quarantined=record.get("quarantined", 0),
                            classes=record.get("classes", {c: 0 for c in LINE_CLASSES}),
                            encoding=record.get("encoding", ""),
                            delimiter=record.get("delimiter", ""),
                        )
                    )
                    if progress:
                        progress(1)
                    continue
                raw = raw if raw is not None else read_raw(path)  # (read ahead unless it was committed then)
                pending.append((path, digest, raw))
                pending_rows += raw.rows
                if pending_rows >= batch_rows:
                    _flush(store, committed, pending, report, plausible, progress)
                    pending, pending_rows = [], 0
        _flush(store, committed, pending, report, plausible, progress)
    return report


class _CommittedIds:
    """The line ids committed on each day, as one run sees them: a day's ids are read from its
    parts once, then kept up to date as the run commits files, so that a day exported as many
    small files costs one read of its parts, not one per file (which grows with the square of the
    files per day). Beyond ``max_ids`` ids in all, the days least recently asked for are
    forgotten (and read again if asked for again). Valid while the run holds the store's lock:
    nothing else commits meanwhile."""

    def __init__(self, store: OrderStore, max_ids: int | None = None) -> None:
        self.store, self.max_ids = store, HELD_LINE_IDS if max_ids is None else max_ids
        self._days: OrderedDict[str, list[pa.Array]] = OrderedDict()
        self._held = 0

    def ids(self, days: set[str]) -> pa.Array:
        """The ids committed on these days (ISO dates)."""
        missing = [d for d in days if d not in self._days]
        read = self.store.line_ids_by_day(missing)
        for d in missing:
            self._days[d] = [read[d]] if d in read else []
            self._held += len(read.get(d, ()))
        for d in sorted(days):
            self._days.move_to_end(d)
        chunks = [c for d in sorted(days) for c in self._days[d]]
        self._forget(keep=days)
        return pa.concat_arrays(chunks) if chunks else pa.array([], pa.int64())

    def add(self, canon: pa.Table) -> None:
        """Lines just committed: added to the days already held (a day not held is read when asked for)."""
        if not canon.num_rows:
            return
        days = day_of(canon.column("invoice_ts"))
        ids = canon.column("line_id").combine_chunks()
        for d in np.unique(days):
            if d in self._days:
                chunk = ids.filter(pa.array(days == d))
                self._days[d].append(chunk)
                self._held += len(chunk)
        self._forget(keep=set())

    def _forget(self, keep: set[str]) -> None:
        while self._held > self.max_ids and len(self._days) > len(keep):
            day = next(d for d in self._days if d not in keep)
            self._held -= sum(len(c) for c in self._days.pop(day))


class _ReadAhead:
    """The files' digests and text, read by a thread while the batch before them is classified and
    written (reading is Python's CSV parser; classifying and writing leave the interpreter free).

    Holds at most ``max_rows`` rows read ahead (plus one file); a file already committed is not
    read. A file that cannot be read raises when the loop reaches it, so every file before it is
    handled first, as without the thread.
    """

    def __init__(self, files: Sequence[Path], store: OrderStore, *, max_rows: int) -> None:
        self._files, self._store, self._max_rows = files, store, max_rows
        self._items: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._ahead = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._read, name="ingest-read-ahead", daemon=True)

    def __enter__(self) -> "_ReadAhead":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()

    def _read(self) -> None:
        for path in self._files:
            with self._cond:
                self._cond.wait_for(lambda: self._ahead < self._max_rows or self._stopped)
                if self._stopped:
                    return
            try:
                digest = _sha256(path)
                raw = None if self._store.file_record(digest) is not None else read_raw(path)
            except BaseException as exc:  # handed to the loop, which raises it in its turn
                self._items.put((path, None, None, exc))
                return
            with self._cond:
                self._ahead += raw.rows if raw is not None else 0
            self._items.put((path, digest, raw, None))
        self._items.put(None)

    def __iter__(self) -> Iterator[tuple[Path, str, RawFrame | None]]:
        while (item := self._items.get()) is not None:
            path, digest, raw, exc = item
            if exc is not None:
                raise exc
            with self._cond:
                self._ahead -= raw.rows if raw is not None else 0
                self._cond.notify_all()
            yield path, digest, raw


def _flush(
    store: OrderStore,
    committed: "_CommittedIds",
    pending: list[tuple[Path, str, RawFrame]],
    report: IngestReport,
    plausible: Plausibility,
    progress: Callable[[int], None] | None,
) -> None:

    if not pending:
        return
    # Two files of one batch can share a name; classify under a unique key, report the real path.
    keys = [f"{k}\x1f{path.name}" for k, (path, _digest, _raw) in enumerate(pending)]
    keyed = []
    for key, (_path, _digest, raw) in zip(keys, pending):
        frame = raw.frame.set_column(
            raw.frame.schema.get_field_index("source_file"), "source_file", pa.array([key] * raw.frame.num_rows, pa.string())
        )
        broken = raw.broken.assign(source_file=key)
        keyed.append(RawFrame(frame, broken, raw.encoding, raw.delimiter))
    result = classify(RawFrame.concat(keyed), plausible=plausible)
    canonical = result.canonical
    # each row's file, by its position in the batch: one pass over the rows, whatever the number of files
    codes = pc.index_in(canonical.column("source_file"), value_set=pa.array(keys, pa.string())).to_numpy(zero_copy_only=False)
    by_file = np.argsort(codes, kind="stable")  # within a file, the classified order (its lines)
    bounds = np.searchsorted(codes[by_file], np.arange(len(pending) + 1))
    file_col = canonical.schema.get_field_index("source_file")
    quar_by_file = dict(tuple(result.quarantine.groupby("source_file", sort=False)))
    empty_quar = result.quarantine.iloc[0:0]
    for k, (key, (path, digest, raw)) in enumerate(zip(keys, pending)):
        canon = canonical.take(by_file[bounds[k]:bounds[k + 1]])
        canon = canon.set_column(file_col, "source_file", pa.array([path.name] * canon.num_rows, pa.string()))
        quarantine = quar_by_file.get(key, empty_quar).assign(source_file=path.name)
        if canon.num_rows:
            # The same order lines can arrive again in a later, differently named export.
            # a day either side: another system's clock or time zone can put the same line on the next day
            days = np.unique(day_of(canon.column("invoice_ts")).astype("datetime64[D]"))
            known = committed.ids({str(d + k) for d in days for k in (-1, 0, 1)})
            if len(known):
                canon = canon.filter(pc.invert(pc.is_in(canon.column("line_id"), value_set=known)))
        fr = FileReport(
            path=str(path),
            sha256=digest,
            status="ingested",
            rows_in=raw.rows,
            rows_written=canon.num_rows,
            quarantined=len(quarantine),
            classes=result.classes.get(key, {c: 0 for c in LINE_CLASSES}),
            encoding=raw.encoding,
            delimiter=raw.delimiter,
        )
        store.commit_file(digest, path, canon, quarantine, fr)
        committed.add(canon)
        report.add(fr)
        crash_point("ingest")  # a file committed, the next ones not yet
        if progress:
            progress(1)
