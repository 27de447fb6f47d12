"""Benchmark: `patron ingest` + `patron features build`, wall time and peak memory per step.

Each run starts from an empty state directory and runs the real command line in a child process,
so the figures are what an operator sees (interpreter start-up and imports included). Peak memory
is the child's maximum resident set size, read from the kernel (wait4), not sampled.

    python benchmarks/ingest_features.py shipped --runs 5
    python benchmarks/ingest_features.py synthetic --customers 100000 --products 5000 --days 365 --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "online-retail" / "daily"


def run_step(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB (the kernel's figure for this child) and its stdout."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as errout:
        pid = os.posix_spawnp(cmd[0], cmd, os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, errout.fileno(), 2),
        ])
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        errout.seek(0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"{' '.join(cmd)} failed:\n{errout.read()[-4000:]}")
        return wall, usage.ru_maxrss / 1024, out.read()


def patron() -> str:
    exe = Path(sys.executable).with_name("patron")
    return str(exe) if exe.exists() else "patron"


def one_run(source: Path, work: Path) -> dict:
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    ingest_s, ingest_mb, out = run_step([patron(), "ingest", "--source", str(source), "--json", "--home", str(home)])
    report = json.loads(out.strip().splitlines()[-1])
    build_s, build_mb, _ = run_step([patron(), "features", "build", "--home", str(home)])
    shutil.rmtree(home, ignore_errors=True)
    return {
        "rows_in": report["rows_in"],
        "ingest_s": ingest_s,
        "ingest_peak_mib": ingest_mb,
        "build_s": build_s,
        "build_peak_mib": build_mb,
        "total_s": ingest_s + build_s,
    }


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}, {platform.system()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", choices=["shipped", "synthetic"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--products", type=int, default=5_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "patron-bench")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.data == "shipped":
        source = SHIPPED
    else:
        from patron_synth.shop import generate

        source = args.work / f"synth-{args.customers}-{args.products}-{args.days}"
        if not (source / ".complete").exists():
            shutil.rmtree(source, ignore_errors=True)
            s = generate(source, customers=args.customers, products=args.products, days=args.days, compress=True)
            (source / ".complete").write_text(json.dumps({"lines": s.lines, "files": s.files}))
    runs = []
    for k in range(args.runs):
        r = one_run(source, args.work)
        runs.append(r)
        print(f"run {k + 1}/{args.runs}: " + ", ".join(f"{key}={v:.1f}" if isinstance(v, float) else f"{key}={v}" for key, v in r.items()), file=sys.stderr)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "rows_in"}
    peak = max(max(r["ingest_peak_mib"], r["build_peak_mib"]) for r in runs)
    print(f"machine: {machine()}")
    print(f"command: python benchmarks/ingest_features.py {' '.join(sys.argv[1:])}")
    print("| data | lines | runs | ingest s (median) | features build s (median) | total s (median) | peak RSS MiB (max) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.data} | {runs[0]['rows_in']:,} | {len(runs)} | {med['ingest_s']:.1f} | {med['build_s']:.1f} | "
        f"{med['total_s']:.1f} | {peak:,.0f} |"
    )


if __name__ == "__main__":
    main()
