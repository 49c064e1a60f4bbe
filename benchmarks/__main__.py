"""``python -m benchmarks``: run the benchmarks, print ONE JSON object on stdout.

    .venv/bin/python -m benchmarks                     # all three, ~70 s on 2 cores
    .venv/bin/python -m benchmarks --quick             # shorter runs (~35 s)
    .venv/bin/python -m benchmarks --only delivery     # or http_accept, inprocess_accept (a,b)
    .venv/bin/python -m benchmarks --only scaleout     # PostgreSQL, 1-2 servers, 1-4 workers

Each figure is reported beside a baseline measured in the same run, as a
ratio (absolute figures drift between machines and runs; ratios less so).
Progress goes to stderr. Exit status 1 when a benchmark failed to run (its
entry then holds ``"error"``); missing a target is reported, not an error.

* ``http_accept``: accepted sends/s over HTTP (``commtunnel serve --no-worker``)
  vs. a bare Starlette endpoint, wrk, 64 connections.
* ``inprocess_accept``: ``await ct.email.send(...)`` from 64 tasks vs. plain
  SQLite inserts of the same rows.
* ``delivery``: the dispatch worker over ``smtp://...?pool_size=8`` vs. raw
  aiosmtplib with 8 reused connections, both into an aiosmtpd sink process.
* ``scaleout`` (only when named in ``--only``: it needs a PostgreSQL server
  and doubles the run time): accepted sends/s and p50/p99 with 1 and 2
  ``commtunnel serve`` processes vs. 1 and 2 bare endpoints, delivered
  emails/s with 1, 2 and 4 ``commtunnel worker`` processes vs. raw aiosmtplib,
  on one PostgreSQL database (``--scaleout-db sqlite`` for a SQLite file).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks._util import background_cpu, log, machine_info

NAMES = ("http_accept", "inprocess_accept", "delivery", "scaleout")
#: What runs without --only: scaleout needs PostgreSQL and ~2 more minutes.
DEFAULT = ("http_accept", "inprocess_accept", "delivery")


def _runner(name: str, args: argparse.Namespace) -> Callable[[], dict[str, Any]]:
    if name == "http_accept":
        from benchmarks import http_accept

        return lambda: http_accept.run(
            quick=args.quick,
            connections=args.connections,
            threads=args.wrk_threads,
            python_load=args.python_load,
        )
    if name == "inprocess_accept":
        from benchmarks import inprocess_accept

        return lambda: inprocess_accept.run(quick=args.quick, concurrency=args.tasks)
    if name == "scaleout":
        from benchmarks import scaleout

        return lambda: scaleout.run(
            quick=args.quick,
            db=args.scaleout_db,
            pg_url=args.pg_url,
            connections=args.connections,
            threads=args.wrk_threads,
            pool_size=args.pool_size,
            concurrency=args.worker_concurrency,
        )
    from benchmarks import delivery

    return lambda: delivery.run(
        quick=args.quick,
        pool_size=args.pool_size,
        concurrency=args.worker_concurrency,
        loop=args.loop,
    )


def _run_rounds(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One result, or with ``--rounds N`` the median-ratio round plus every round's figures."""
    run = _runner(name, args)
    if args.rounds <= 1:
        return run()
    results = []
    for i in range(args.rounds):
        log(f"{name}: round {i + 1}/{args.rounds}")
        results.append(run())
    ordered = sorted(results, key=lambda r: r.get("ratio") or 0.0)
    chosen = dict(ordered[len(ordered) // 2])
    chosen["rounds"] = [
        r["summary"]
        if "summary" in r
        else {k: r.get(k) for k in ("commtunnel_rps", "baseline_rps", "ratio", "p99_ms") if k in r}
        for r in results
    ]
    chosen["reported_round"] = "median ratio of the rounds"
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Commtunnel benchmarks (JSON on stdout)."
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs")
    parser.add_argument(
        "--only",
        default=",".join(DEFAULT),
        help=f"comma-separated subset of {', '.join(NAMES)} (default: {', '.join(DEFAULT)})",
    )
    parser.add_argument("--connections", type=int, default=64, help="http_accept: connections")
    parser.add_argument("--wrk-threads", type=int, default=1, help="http_accept: wrk threads")
    parser.add_argument(
        "--python-load",
        action="store_true",
        help="http_accept: use the Python load generator even when wrk is there",
    )
    parser.add_argument("--tasks", type=int, default=64, help="inprocess_accept: concurrent tasks")
    parser.add_argument("--pool-size", type=int, default=8, help="delivery: SMTP connections")
    parser.add_argument(
        "--worker-concurrency", type=int, default=32, help="delivery: attempts in flight"
    )
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="delivery: event loop"
    )
    parser.add_argument(
        "--scaleout-db",
        choices=("postgresql", "sqlite"),
        default="postgresql",
        help="scaleout: the database all processes share",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("COMMTUNNEL_TEST_PG", "postgresql://127.0.0.1:5432/test"),
        help="scaleout: PostgreSQL database to create a throw-away schema per run in "
        "[default: $COMMTUNNEL_TEST_PG or postgresql://127.0.0.1:5432/test]",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each benchmark (figure and baseline) N times; report the median-ratio round "
        "and every round's figures (use 3 on a machine that is busy with other work)",
    )
    args = parser.parse_args(argv)
    selected = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(selected) - set(NAMES))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(NAMES)}")

    started = time.perf_counter()
    report: dict[str, Any] = {
        "machine": machine_info(),
        "mode": "quick" if args.quick else "full",
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    failed = False
    for name in NAMES:
        if name not in selected:
            continue
        log(f"--- {name}")
        busy = background_cpu()
        if busy is not None and busy > 0.25:
            log(f"warning: the machine was {busy:.0%} busy before {name}; ratios may be skewed")
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        try:
            result = _run_rounds(name, args)
        except Exception as exc:  # report it and go on with the others
            failed = True
            log(f"{name} failed: {exc!r}")
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        result["wall_seconds"] = round(time.perf_counter() - t0, 1)
        # Other work on the machine skews one side of a ratio: say how busy it was.
        result["machine_busy_before"] = busy
        result["loadavg_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        report[name] = result
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["summary"] = {
        # scaleout has several figures: its own summary, moved up here.
        name: report[name].pop("summary")
        if "summary" in report[name]
        else {
            k: report[name].get(k)
            for k in (
                "commtunnel_rps",
                "baseline_rps",
                "ratio",
                "target_ratio",
                "meets_target",
                "p99_ms",
                "non_2xx",
                "error",
            )
            if k in report[name]
        }
        for name in NAMES
        if name in report
    }
    # The summary first, then the details.
    report = {"machine": report.pop("machine"), "summary": report.pop("summary"), **report}
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
