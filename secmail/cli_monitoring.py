"""
The C{secmail stats} and C{secmail snmp-pass} commands: the daily statistics, and the
gateway's figures for net-snmp.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from secmail.cli_db import CommandError, load_settings, open_db, wait


def stats(args: argparse.Namespace) -> int:
    """The day's statistics of the last N days (UTC), as the statistics mail shows them."""
    from secmail.monitoring.summary import last_days, lines, table, utc_today
    from secmail.store.stats import DailyStats

    if not 1 <= args.days <= 3660:
        raise CommandError(f"--days: {args.days} is not between 1 and 3660")
    days = last_days(utc_today(time.time()), args.days)
    with open_db(args, load_settings(args)) as db:
        counts = wait(DailyStats(db).days(days[0], days[-1]))
    print(f"secmail statistics, {days[0]} to {days[-1]} (UTC), all nodes")
    print(table(lines(counts, days), days, per_day=args.days <= 14), end="")
    return 0


def snmp_pass(args: argparse.Namespace) -> int:
    """net-snmp's pass_persist handler (see secmail/monitoring/snmp.py and etc/snmp/)."""
    from secmail.monitoring import snmp

    try:
        url = args.url or snmp.metrics_url(load_settings(args).metrics.listen)
    except ValueError as e:
        raise CommandError(str(e)) from None
    return snmp.serve(snmp.Figures(url), sys.stdin, sys.stdout)


def add_commands(sub: Any, own: list[argparse.ArgumentParser]) -> None:
    sa = sub.add_parser("stats", parents=own, help="the daily statistics of the last days")
    sa.add_argument("--days", type=int, default=7, help="how many days, today included (7)")
    sa.set_defaults(run=stats)
    sp = sub.add_parser(
        "snmp-pass", parents=own, help="serve the gateway's figures to snmpd (pass_persist)"
    )
    sp.add_argument(
        "--url", default=None, help="the gateway's metrics listener (default: from metrics.listen)"
    )
    sp.set_defaults(run=snmp_pass)
