"""Ingesting files: check every header first, then read, classify and commit one file at a time."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from patron.faults import crash_point
from patron.features.ingest.classify import classify
from patron.features.ingest.ledger import OrderStore, day_of
from patron.features.ingest.read import RawFrame, find_files, read_raw, validate_header
from patron.features.ingest.schema import FileReport, IngestReport
from patron.rules import LINE_CLASSES, Plausibility


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
        for path in files:
            digest = _sha256(path)
            record = store.file_record(digest)
            if record is None and any(d == digest for _, d, _ in pending):
                record = {}  # the same bytes twice in one run: the second copy is a re-ingest
            if record is not None:
                _flush(store, pending, report, plausible, progress)
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
            raw = read_raw(path)
            pending.append((path, digest, raw))
            pending_rows += raw.rows
            if pending_rows >= batch_rows:
                _flush(store, pending, report, plausible, progress)
                pending, pending_rows = [], 0
        _flush(store, pending, report, plausible, progress)
    return report


def _flush(
    store: OrderStore,
    pending: list[tuple[Path, str, RawFrame]],
    report: IngestReport,
    plausible: Plausibility,
    progress: Callable[[int], None] | None,
) -> None:

    if not pending:
        return
    # Two files of one batch can share a name; classify under a unique key, report the real path.
    keyed = []
    for k, (path, _digest, raw) in enumerate(pending):
        key = f"{k}\x1f{path.name}"
        frame = raw.frame.set_column(
            raw.frame.schema.get_field_index("source_file"), "source_file", pa.array([key] * raw.frame.num_rows, pa.string())
        )
        broken = raw.broken.assign(source_file=key)
        keyed.append(RawFrame(frame, broken, raw.encoding, raw.delimiter))
    result = classify(RawFrame.concat(keyed), plausible=plausible)
    canon_by_file = dict(tuple(result.canonical.groupby("source_file", sort=False)))
    quar_by_file = dict(tuple(result.quarantine.groupby("source_file", sort=False)))
    empty_canon = result.canonical.iloc[0:0]
    empty_quar = result.quarantine.iloc[0:0]
    for k, (path, digest, raw) in enumerate(pending):
        key = f"{k}\x1f{path.name}"
        canon = canon_by_file.get(key, empty_canon).assign(source_file=path.name)
        quarantine = quar_by_file.get(key, empty_quar).assign(source_file=path.name)
        if len(canon):
            # The same order lines can arrive again in a later, differently named export.
            # a day either side: another system's clock or time zone can put the same line on the next day
            days = np.unique(day_of(canon["invoice_ts"]).astype("datetime64[D]"))
            known = store.existing_line_ids({str(d + k) for d in days for k in (-1, 0, 1)})
            if known:
                canon = canon[~canon["line_id"].isin(known)]
        fr = FileReport(
            path=str(path),
            sha256=digest,
            status="ingested",
            rows_in=raw.rows,
            rows_written=len(canon),
            quarantined=len(quarantine),
            classes=result.classes.get(key, {c: 0 for c in LINE_CLASSES}),
            encoding=raw.encoding,
            delimiter=raw.delimiter,
        )
        store.commit_file(digest, path, canon, quarantine, fr)
        report.add(fr)
        crash_point("ingest")  # a file committed, the next ones not yet
        if progress:
            progress(1)
