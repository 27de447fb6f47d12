"""Benchmark: `patron ingest` of a shop whose every day comes as many small files.

Some platforms export an order (or a few minutes of orders) per file. A synthetic shop is written
(`patron synth`), each day's file is cut into ``--parts`` files of consecutive rows (header
repeated), and the real command line ingests them into an empty state directory: wall time and
peak memory (the kernel's figure, wait4) per run, and the stored lines, which must not depend on
how the days were cut.

    python benchmarks/many_files.py --parts 1 --parts 20 --parts 80 --runs 3
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_features import machine, patron, run_step  # noqa: E402


def cut(raw: Path, out: Path, parts: int) -> int:
    """Each daily file of ``raw`` as ``parts`` files of consecutive rows under ``out``; files written."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    written = 0
    for day in sorted(raw.glob("*.csv*")):
        opener = gzip.open if day.suffix == ".gz" else open
        with opener(day, "rt", newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        header, body = rows[0], rows[1:]
        step = max(1, -(-len(body) // parts))
        stem = day.name.split(".")[0]
        for k in range(0, len(body), step):
            with open(out / f"{stem}-{k // step:04d}.csv", "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh)
                w.writerow(header)
                w.writerows(body[k:k + step])
            written += 1
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=3000)
    ap.add_argument("--products", type=int, default=500)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--parts", type=int, action="append", help="files per day (repeat the option)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/patron-many-files"))
    args = ap.parse_args()
    raw = args.work / "raw"
    if not raw.exists():
        run_step([patron(), "synth", "--customers", str(args.customers), "--products", str(args.products),
                  "--days", str(args.days), "--out", str(raw)])
    print(machine())
    print("| files per day | files | runs | ingest s (median) | peak RSS MiB (max) | lines stored |")
    print("|---:|---:|---:|---:|---:|---:|")
    for parts in args.parts or [1, 20, 80]:
        files = cut(raw, args.work / f"cut-{parts}", parts)
        walls, peaks, stored = [], [], set()
        for _ in range(args.runs):
            home = args.work / "home"
            shutil.rmtree(home, ignore_errors=True)
            wall, peak, out = run_step([patron(), "ingest", "--source", str(args.work / f"cut-{parts}"), "--home", str(home), "--json"])
            walls.append(wall)
            peaks.append(peak)
            stored.add(json.loads(out)["rows_written"])
        print(f"| {parts} | {files} | {args.runs} | {statistics.median(walls):.1f} | {max(peaks):.0f} | {', '.join(map(str, sorted(stored)))} |",
              flush=True)


if __name__ == "__main__":
    main()
