"""The ``retention`` command: up | worker | evaluator | produce | ingest | keys | status | ...

Each command imports what it needs when it runs: reading one customer or the status should
not wait for numpy, scipy, Faust or Kafka clients to load (a unit test keeps it so).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retention import logs

if TYPE_CHECKING:
    from retention.config import Settings

#: The customer attributes a breakdown can go by (contract.events.ATTRIBUTES, named here
#: so that parsing the command line imports nothing more).
BREAKDOWNS = ("country", "channel", "shop", "currency")

logger = logging.getLogger("retention")


def _settings(args: argparse.Namespace) -> Settings:
    from processors.windows import use_calendar
    from retention.config import Settings

    overrides: dict[str, Any] = {}
    for name in ("kafka_bootstrap", "redis_url", "data_dir", "topic_prefix", "key_prefix"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    settings = Settings(**overrides)
    use_calendar(settings.calendar())
    return settings


def _services(args: argparse.Namespace) -> Settings:
    from retention.services import resolve

    return resolve(_settings(args))


def cmd_up(args: argparse.Namespace) -> int:
    from retention.stack import run_up

    return run_up(
        _settings(args),
        demo=args.demo,
        workers=args.workers,
        evaluators=args.evaluators,
        broker_port=args.broker_port,
        redis_port=args.redis_port,
        notifications=args.notifications or _settings(args).notifications_file,
        metrics_port=args.metrics_port,
        with_prometheus=args.with_prometheus,
        ingest_port=args.ingest_port,
    )


def cmd_worker(args: argparse.Namespace) -> int:
    _calm_blas()  # the leader refits beside ingestion
    from retention.worker import UnsafeRedis, run
    from store.shards import LayoutMismatch

    try:
        run(_services(args), loglevel=args.log_level)
    except (UnsafeRedis, LayoutMismatch) as exc:
        print(f"retention worker: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_evaluator(args: argparse.Namespace) -> int:
    from retention.evaluator import run

    if not 0 <= args.index < args.of:
        print("retention evaluator: --of is at least 1, --index from 0 to OF - 1", file=sys.stderr)
        return 2
    run(_services(args), (args.index, args.of), args.alive_file)
    return 0


def cmd_demo_inbox(args: argparse.Namespace) -> int:
    import signal

    from retention.demo_inbox import serve

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.folder, args.http_port, args.smtp_port, stop)

    asyncio.run(go())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo
    from streams.topics import Topics

    settings = _services(args)
    assert settings.kafka_bootstrap
    asyncio.run(
        run_demo(
            settings.kafka_bootstrap,
            Topics.from_settings(settings),
            security=settings.kafka_security(),
            customers=args.customers,
            seed=args.seed,
            rate_per_second=args.rate,
        )
    )
    return 0


async def _count_bad(settings: Settings, reasons: dict[str, int]) -> None:
    from retention.publish_file import PRODUCE_SOURCE
    from store.connect import connect
    from store.store import Store

    if not settings.redis_url or not reasons:
        return
    redis = connect(settings.redis_url, decode_responses=True)
    try:
        await Store(redis, settings.key_prefix).count_rejected(PRODUCE_SOURCE, reasons)
    finally:
        await redis.aclose()


def cmd_produce(args: argparse.Namespace) -> int:
    from retention.publish_file import publish_file
    from streams.producer import EventProducer
    from streams.topics import Topics, ensure_topics

    settings = _services(args)
    assert settings.kafka_bootstrap
    bootstrap = settings.kafka_bootstrap
    margin = settings.max_future_seconds

    def report(line_no: int, rejection: Any) -> None:
        print(f"{args.file}:{line_no}: {rejection.reason}: {rejection.detail}", file=sys.stderr)

    async def go() -> int:
        topics = Topics.from_settings(settings)
        security = settings.kafka_security()
        await ensure_topics(bootstrap, topics, settings.partitions, security)
        async with EventProducer(
            bootstrap,
            topics,
            settings.default_currency,
            max_future_seconds=margin,
            security=security,
        ) as producer:
            result = await publish_file(Path(args.file), producer, on_bad=report)
        await _count_bad(settings, dict(result.reasons()))
        print(f"sent {result.sent} events; {len(result.bad)} bad lines sent to {topics.dlq}")
        return 0

    return asyncio.run(go())


_MONEY = {
    "revenue",
    "refunded_amount",
    "aov",
    "expected_spend",
    "cltv",
    "cltv_at_risk",
    "last_order_amount",
}
_SHARES = {"p_alive", "risk_score"}
_COUNTS = {"expected_purchases_30d", "expected_purchases_90d"}
#: in --json only: long, or shown another way below the fields
_JSON_ONLY = {"orders_by_day", "risk_details", "evidence", "currency"}


def _format_customer(data: dict[str, Any]) -> str:
    """For people: money with two decimals and its currency, shares as percentages,
    expected orders with one decimal, durations in hours or days; each reason in words
    with its next step. ``--json`` carries the raw numbers."""
    from processors import human

    currency = str(data.get("currency") or "")
    shown = {k: v for k, v in data.items() if k not in _JSON_ONLY}
    width = max(len(k) for k in shown)
    lines = []
    for key, value in shown.items():
        if key in _MONEY:
            text = human.money(value, currency)
        elif key in _SHARES:
            text = human.percent(value)
        elif key in _COUNTS:
            text = human.count(value)
        elif key == "first_response_seconds_avg":
            text = human.duration(value)
        elif key == "revenue_by_currency":
            text = ", ".join(human.money(v, k) for k, v in value.items()) or "-"
        elif isinstance(value, dict):
            text = ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            text = ", ".join(map(str, value)) or "-"
        elif isinstance(value, bool):
            text = "yes" if value else "no"
        else:
            text = "-" if value is None else str(value)
        lines.append(f"{key:<{width}}  {text}")
    for item in data.get("evidence") or ():
        lines.append(f"- {item['reason']}: {item['text']}")
        if item.get("next_step"):
            lines.append(f"  next step: {item['next_step']}")
    return "\n".join(lines)


def _attribute_options(parser: argparse.ArgumentParser) -> None:
    """--country, --channel, --shop: customers whose latest attribute is one of these."""
    for name in ("country", "channel", "shop"):
        parser.add_argument(
            f"--{name}", metavar="VALUE[,VALUE]", help=f"only customers whose latest {name} is one"
        )


def cmd_at_risk(args: argparse.Namespace) -> int:
    from processors import human
    from processors.segments import attribute_filter
    from retention.queries import at_risk

    settings = _services(args)
    wanted = attribute_filter({n: getattr(args, n) for n in ("country", "channel", "shop")})
    rows = asyncio.run(at_risk(settings, args.limit, wanted))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no customer at risk")
        return 0
    # ranked by CLTV at risk: predicted CLTV x risk score
    cur = settings.reporting_currency
    print(
        f"{'customer':<24} {'risk':>5} {'band':<6} {'CLTV ' + cur:>14} {'at risk ' + cur:>14} "
        f"{'revenue ' + cur:>14}  {'hv':<3} {'last active':<11} reasons"
    )
    for r in rows:
        print(
            f"{r['customer_id']:<24} {human.percent(r['risk_score']):>5} {r['band'] or '-':<6} "
            f"{human.money(r['cltv']):>14} {human.money(r['cltv_at_risk']):>14} "
            f"{human.money(r['revenue']):>14}  {'yes' if r['high_value'] else '':<3} "
            f"{human.day(r['last_activity_at']):<11} {', '.join(r['risk_reasons'])}"
        )
    print("CLTV: predicted, as of each customer's last evaluation; - until a model is fitted")
    return 0


def cmd_alerts(args: argparse.Namespace) -> int:
    from processors import human
    from retention.queries import alert_outcomes

    settings = _services(args)
    listed, counted = asyncio.run(alert_outcomes(settings, args.window))
    if args.json:
        out: dict[str, Any] = {"window_days": counted.window_days}
        if args.outcomes:
            out["outcomes"] = counted.rows()
        else:
            out["alerts"] = listed[: args.limit]
        print(json.dumps(out, indent=2))
        return 0
    if args.outcomes:
        print(f"an alert worked when its customer ordered within {counted.window_days} days")
        print(
            f"{'kind':<24} {'band':<7} {'alerts':>7} {'returned':>9} {'not':>6} "
            f"{'pending':>8} {'rate':>6}"
        )
        for row in counted.rows():
            print(
                f"{row['kind']!s:<24} {row['band'] or '-'!s:<7} {row['alerts']:>7} "
                f"{row['returned']:>9} {row['not_returned']:>6} {row['pending']:>8} "
                f"{human.percent(row['return_rate']):>6}"  # type: ignore[arg-type]
            )
        if not counted.counts:
            print("no alert raised yet")
        return 0
    for item in listed[: args.limit]:
        print(
            f"{item['at'][:16]}  {item['kind']:<22} {item['band'] or '-':<6} "
            f"{item['customer_id']:<24} {item['outcome']}"
        )
    if not listed:
        print("no alert raised yet")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from retention.export import export
    from retention.ingest_rules import RequestError
    from retention.read_api import filters_of
    from store.connect import connect
    from store.store import Store

    settings = _services(args)
    query = {
        "segment": args.segment,
        "band": args.band or "",
        "min_cltv": "" if args.min_cltv is None else str(args.min_cltv),
        "active_before": args.active_before or "",
        "active_after": args.active_after or "",
        "country": args.country or "",
        "channel": args.channel or "",
        "shop": args.shop or "",
    }
    try:
        segment, filters = filters_of(query)
    except RequestError as exc:
        print(f"retention export: {exc.detail}", file=sys.stderr)
        return 2

    async def go() -> int:
        redis = connect(settings.redis_url or "", decode_responses=True)
        try:
            store = Store(redis, settings.key_prefix)
            currency = settings.reporting_currency
            return await export(store, segment, filters, currency, args.format, args.out)
        finally:
            await redis.aclose()

    written = asyncio.run(go())
    if args.out is not None:
        print(f"{written} customers of {segment} written to {args.out}", file=sys.stderr)
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from retention.queries import forget

    settings = _services(args)
    question = (
        f"Erase customer {args.id!r} from {_redacted(settings.redis_url)}: its state, "
        "evaluation, alerts and notifier records, for good?"
    )
    if not args.yes and not _confirmed(question, "nothing erased"):
        return 1
    erased = asyncio.run(forget(settings, args.id))
    found = "erased" if erased.stored else "not stored; its tombstone is set"
    print(
        f"customer {args.id!r} {found}; {erased.alerts_logged} logged alerts and "
        f"{erased.notifier_records} notifier records removed. Its events stay in the Kafka "
        "topics until their retention removes them; a replay or rebuild skips them."
    )
    return 0


def cmd_customer(args: argparse.Namespace) -> int:
    from retention.queries import customer

    data = asyncio.run(customer(_services(args), args.id))
    if data is None:
        print(f"no customer {args.id!r}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else _format_customer(data))
    return 0


def cmd_restore_customer(args: argparse.Namespace) -> int:
    from retention.restore import RestoreError, restore_customer

    try:
        asyncio.run(restore_customer(_services(args), args.id))
    except RestoreError as exc:
        print(f"retention restore-customer: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from retention import status
    from retention.services import Services

    settings = _services(args)
    st = asyncio.run(status.gather(settings))
    recorded = Services.read(settings.data_dir)
    if recorded is not None:
        st.add_recorded(recorded)
    print(json.dumps(st.as_dict(), indent=2) if args.json else status.render(st))
    return 0 if st.ok else 1


def cmd_rebuild(args: argparse.Namespace) -> int:
    from retention.rebuild import rebuild

    settings = _services(args)
    question = (
        f"Delete every key under {settings.key_prefix!r} in {_redacted(settings.redis_url)}"
        " and replay the topics into it?"
    )
    if not args.yes and not _confirmed(question, "nothing deleted"):
        return 1
    return asyncio.run(rebuild(settings, wait=not args.no_wait, shards=args.shards))


def _confirmed(question: str, refusal: str) -> bool:
    """Whether the person at the terminal answers yes; prints ``refusal`` when not."""
    if input(f"{question} [y/N] ").strip().lower() in ("y", "yes"):
        return True
    print(refusal)
    return False


def _redacted(url: str | None) -> str:
    """A service URL without its password, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url or "")
    if parts.password is None:
        return url or ""
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def cmd_metrics(args: argparse.Namespace) -> int:
    from retention.queries import live_breakdown, live_periods
    from retention.report import render_periods, value_heading

    settings = _services(args)
    churn = args.churn_after or settings.churn_after_days
    if args.by:
        view = asyncio.run(live_breakdown(settings, args.period, churn, args.by))
        if args.json:
            print(json.dumps({"period": args.period, "churn_after_days": churn, **view}))
            return 0
        print(render_periods(view["periods"], args.period, settings.reporting_currency))
        for part in view["breakdown"]:
            print("\n" + value_heading(args.by, part["value"], part["customers"]) + "\n")
            print(render_periods(part["periods"], args.period, settings.reporting_currency))
        return 0
    rows, active = asyncio.run(live_periods(settings, args.period, churn))
    if args.json:
        out = {"period": args.period, "churn_after_days": churn, "periods": rows}
        print(json.dumps({**out, "active_customers": active}))
    else:
        print(render_periods(rows, args.period, settings.reporting_currency))
        print("active now: " + ", ".join(f"{n} this {p}" for p, n in active.items()))
    return 0


def cmd_cohorts(args: argparse.Namespace) -> int:
    from retention.queries import live_cohorts, live_cohorts_by
    from retention.report import plot_cohorts, render_cohorts, value_heading

    settings = _services(args)
    currency = settings.reporting_currency if args.revenue else None
    if args.by:
        view = asyncio.run(live_cohorts_by(settings, args.period, args.by))
        if args.plot:
            plot_cohorts(view["cohorts"], args.period, Path(args.plot), revenue=args.revenue)
        if args.json:
            print(json.dumps({"period": args.period, **view}))
        else:
            print(render_cohorts(view["cohorts"], args.period, revenue=currency))
            for part in view["breakdown"]:
                print("\n" + value_heading(args.by, part["value"]) + "\n")
                print(render_cohorts(part["cohorts"], args.period, revenue=currency))
    else:
        matrix = asyncio.run(live_cohorts(settings, args.period))
        if args.plot:
            plot_cohorts(matrix, args.period, Path(args.plot), revenue=args.revenue)
        if args.json:
            print(json.dumps({"period": args.period, "cohorts": matrix}))
        else:
            print(render_cohorts(matrix, args.period, revenue=currency))
    if args.plot:
        print(f"heatmap written to {args.plot}", file=sys.stderr)
    return 0


def _holdout_problem(options: Any, plot: str | None) -> str | None:
    """Why the holdout options do not fit together, if they don't."""
    o = options
    if o.holdout_until is not None and o.holdout_days is not None:
        return "give --holdout DAYS or --until with --holdout-until, not both"
    if o.holdout_until is not None and (o.until is None or o.holdout_until <= o.until):
        return "--holdout-until needs --until, the end of the calibration, before it"
    asked = o.holdout_until is not None or o.holdout_days is not None
    if not asked and (plot or o.holdout_customers):
        return "--plot and --holdout-customers belong to a holdout test (--holdout-until)"
    return None


def _calm_blas() -> None:
    """Set before numpy loads OpenBLAS. Between two calls its threads spin for some 2^28
    cycles before they sleep: on two busy cores (Redis needs one) that spinning took the
    CPU from the fits and made them up to ten times slower, and from ingestion beside a
    refit. Spinning 2^4 cycles keeps the threads, and so the sums to the last bit; one
    thread would change them."""
    import os

    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def cmd_backtest(args: argparse.Namespace) -> int:
    from datetime import date

    _calm_blas()
    from retention import backtest
    from retention.config import Settings

    settings = _settings(args)
    kinds = tuple(k.strip() for k in args.activity.split(",") if k.strip())
    options = backtest.Options(
        path=Path(args.file),
        format=args.format,
        period=args.period,
        churn_days=backtest.parse_duration_days(args.churn_after),
        activity_kinds=Settings(activity_kinds=kinds).activity_kinds,
        report=Path(args.report),
        until=date.fromisoformat(args.until) if args.until else None,
        customers=Path(args.customers) if args.customers else None,
        holdout_days=backtest.parse_duration_days(args.holdout) if args.holdout else None,
        holdout_until=date.fromisoformat(args.holdout_until) if args.holdout_until else None,
        holdout_customers=Path(args.holdout_customers) if args.holdout_customers else None,
        by=args.by,
    )
    problem = _holdout_problem(options, args.plot)
    if problem:
        print(f"retention backtest: {problem}", file=sys.stderr)
        return 2
    started = time.monotonic()
    report, per_customer = backtest.run(settings, options)
    # imported after the run, which imports what it needs while Redis works
    from retention.report import plot_holdout, render_holdout, render_periods, value_heading

    print(render_periods(report["periods"], options.period, settings.reporting_currency))
    for part in report.get("breakdown", {}).get("values", []):
        print("\n" + value_heading(args.by, part["value"], part["customers"]) + "\n")
        print(render_periods(part["periods"], options.period, settings.reporting_currency))
    if report.get("holdout"):
        print(render_holdout(report["holdout"]))
        if args.plot:
            plot_holdout(report["holdout"], Path(args.plot))
            print(f"calibration / holdout plot written to {args.plot}", file=sys.stderr)
    memory = f"{per_customer:,.0f} B" if per_customer is not None else "?"
    print(
        f"{report['events']} events, {report['rejected']} rejected, "
        f"{report['customers']} customers in {time.monotonic() - started:.1f} s; "
        f"Redis memory {memory} per customer; report written to {options.report}"
    )
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    import signal

    from processors.notify_config import NotifyConfigError
    from retention.dispatch import run_notifier
    from retention.notify_file import load_config

    settings = _settings(args)
    path: Path | None = args.config or settings.notifications_file
    if path is None:
        print(
            "retention: no notifications file: pass --config FILE "
            "or set RETENTION_NOTIFICATIONS_FILE",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(path)
    except NotifyConfigError as exc:
        print(f"retention: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(
            f"{path}: {len(config.subscribers)} subscribers: "
            + ", ".join(f"{s.name} ({s.type})" for s in config.subscribers)
        )
        return 0
    settings = _services(args)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_notifier(settings, path, stop)

    asyncio.run(go())
    return 0


def cmd_metrics_server(args: argparse.Namespace) -> int:
    from retention.exporter import run_exporter
    from retention.metrics_http import AuthConfigError

    try:
        return run_exporter(_services(args), args.host, args.port)
    except AuthConfigError as exc:
        print(f"retention: {exc}", file=sys.stderr)
        return 2


def cmd_ingest(args: argparse.Namespace) -> int:
    from retention.ingest import run_ingest

    return run_ingest(_services(args), args.host, args.port)


def cmd_keys(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from retention.api_keys import KeyNameError, KeyStore
    from store.connect import connect
    from store.ingest_state import IngestState

    settings = _services(args)

    async def go() -> int:
        redis = connect(settings.redis_url or "", decode_responses=True)
        try:
            keys = KeyStore(IngestState(redis, settings.key_prefix))
            if args.action == "create":
                scopes = args.scope or ["ingest"]
                key = await keys.create(args.name, scopes)
                print(
                    f"key {args.name!r} ({', '.join(sorted(set(scopes)))}) created; "
                    "it is shown only now, store it safely:"
                )
                print(key)
            elif args.action == "revoke":
                if not await keys.revoke(args.name):
                    print(f"retention: no key named {args.name!r}", file=sys.stderr)
                    return 1
                print(f"key {args.name!r} revoked")
            else:
                for info in await keys.listing():
                    created = datetime.fromtimestamp(info.created_at, UTC).isoformat()
                    print(f"{info.name}\t{','.join(sorted(info.scopes))}\t{created}")
            return 0
        except KeyNameError as exc:
            print(f"retention: {exc}", file=sys.stderr)
            return 2
        finally:
            await redis.aclose()

    return asyncio.run(go())


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, help="where `up` keeps data and records services")
    common.add_argument("--kafka-bootstrap", help="host:port of Kafka (or KAFKA_BOOTSTRAP)")
    common.add_argument(
        "--redis-url",
        help="redis://host:port/db; a command line is visible to every user of the host, so "
        "give a URL with a password in REDIS_URL or REDIS_URL_FILE instead",
    )
    common.add_argument("--topic-prefix", help="prefix before every topic name")
    common.add_argument("--key-prefix", help="prefix before every Redis key")
    common.add_argument("--log-level", default="warn", choices=["debug", "info", "warn", "error"])

    parser = argparse.ArgumentParser(prog="retention", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", parents=[common], help="start the stack and a worker")
    up.add_argument("--demo", action="store_true", help="also run the demo traffic generator")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument(
        "--evaluators",
        type=int,
        help="evaluator processes beside the workers, which then only ingest (default: 1 with"
        " RETENTION_EVALUATION=separate, else none; more than 0 means separate)",
    )
    up.add_argument("--broker-port", type=int)
    up.add_argument("--redis-port", type=int)
    up.add_argument(
        "--notifications", type=Path, metavar="FILE", help="also run the notifier with this file"
    )
    up.add_argument("--metrics-port", type=int, help="serve the exporter here (default: free port)")
    up.add_argument(
        "--with-prometheus", action="store_true", help="also run Debian's prometheus on it"
    )
    up.add_argument("--ingest-port", type=int, help="serve the HTTP ingest API here")
    up.set_defaults(func=cmd_up)

    sub.add_parser("worker", parents=[common], help="run one worker").set_defaults(func=cmd_worker)

    evaluator = sub.add_parser(
        "evaluator",
        parents=[common],
        help="evaluate due customers in a process of its own (RETENTION_EVALUATION=separate)",
    )
    evaluator.add_argument(
        "--index",
        type=int,
        default=0,
        help="this evaluator's share: shards with number %% OF == INDEX",
    )
    evaluator.add_argument(
        "--of", type=int, default=1, help="how many evaluators split the shards (1: all shards)"
    )
    evaluator.add_argument(
        "--alive-file", type=Path, metavar="PATH", help="touched after every round (health checks)"
    )
    evaluator.set_defaults(func=cmd_evaluator)

    produce = sub.add_parser("produce", parents=[common], help="publish a JSONL file of events")
    produce.add_argument("file")
    produce.set_defaults(func=cmd_produce)

    customer = sub.add_parser("customer", parents=[common], help="one customer's state")
    customer.add_argument("id")
    customer.add_argument("--json", action="store_true")
    customer.set_defaults(func=cmd_customer)

    restore = sub.add_parser(
        "restore-customer",
        parents=[common],
        help="rebuild a customer set aside (its state could not be read) from the topics",
    )
    restore.add_argument("id")
    restore.set_defaults(func=cmd_restore_customer)

    st = sub.add_parser("status", parents=[common], help="services, workers and lag")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    rb = sub.add_parser(
        "rebuild", parents=[common], help="wipe the store and replay the topics into it"
    )
    rb.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rb.add_argument("--no-wait", action="store_true", help="wipe, then return at once")
    rb.add_argument(
        "--shards",
        type=int,
        default=None,
        help="record a new shard count for the replay (stop the workers first; start them"
        " with the same RETENTION_SHARDS or none)",
    )
    rb.set_defaults(func=cmd_rebuild)

    at_risk = sub.add_parser("at-risk", parents=[common], help="customers at risk, with reasons")
    at_risk.add_argument("--limit", type=int, default=20)
    at_risk.add_argument("--json", action="store_true")
    _attribute_options(at_risk)
    at_risk.set_defaults(func=cmd_at_risk)

    alerts = sub.add_parser(
        "alerts", parents=[common], help="alerts raised, and whether customers came back"
    )
    alerts.add_argument(
        "--outcomes", action="store_true", help="rates per kind and band instead of a list"
    )
    alerts.add_argument(
        "--window", type=int, help="days after an alert in which an order counts (risk file: 30)"
    )
    alerts.add_argument("--limit", type=int, default=20, help="newest alerts listed")
    alerts.add_argument("--json", action="store_true")
    alerts.set_defaults(func=cmd_alerts)

    forget = sub.add_parser(
        "forget", parents=[common], help="erase a customer for good (GDPR Art. 17)"
    )
    forget.add_argument("id")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    forget.set_defaults(func=cmd_forget)

    exp = sub.add_parser(
        "export", parents=[common], help="every member of a segment, as CSV, JSON lines or Parquet"
    )
    exp.add_argument(
        "--segment",
        required=True,
        choices=["at_risk", "new", "active", "high_value", "churned", "reactivated"],
    )
    exp.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="csv")
    exp.add_argument("--out", type=Path, help="the file to write (default: standard output)")
    exp.add_argument("--band", help="low, medium, high; comma-separated")
    exp.add_argument("--min-cltv", type=float, help="at least this predicted CLTV")
    exp.add_argument("--active-before", help="last activity before this ISO 8601 time")
    exp.add_argument("--active-after", help="last activity at or after this ISO 8601 time")
    _attribute_options(exp)
    exp.set_defaults(func=cmd_export)

    metrics = sub.add_parser("metrics", parents=[common], help="retention metrics per period")
    metrics.add_argument("--period", choices=["day", "week", "month"], default="month")
    metrics.add_argument("--churn-after", type=int, help="churn window W in days")
    metrics.add_argument("--json", action="store_true")
    metrics.add_argument(
        "--by", choices=BREAKDOWNS, help="the same rows per value of a customer attribute"
    )
    metrics.set_defaults(func=cmd_metrics)

    cohorts = sub.add_parser("cohorts", parents=[common], help="the cohort retention matrix")
    cohorts.add_argument("--period", choices=["day", "week", "month"], default="month")
    cohorts.add_argument("--json", action="store_true")
    cohorts.add_argument("--plot", metavar="FILE.png", help="also draw a heatmap")
    cohorts.add_argument(
        "--revenue",
        action="store_true",
        help="the cohorts' revenue per period and its share of their first period's",
    )
    cohorts.add_argument(
        "--by", choices=BREAKDOWNS, help="the same matrix per value of a customer attribute"
    )
    cohorts.set_defaults(func=cmd_cohorts)

    bt = sub.add_parser("backtest", parents=[common], help="replay a history file and report")
    bt.add_argument("file")
    bt.add_argument("--format", choices=["cdnow", "jsonl"], default="jsonl")
    bt.add_argument("--period", choices=["day", "week", "month"], default="month")
    bt.add_argument("--churn-after", default="90d", help="churn window, e.g. 90d or 12w")
    bt.add_argument("--activity", default="order,login", help="event types that count")
    bt.add_argument("--until", metavar="YYYY-MM-DD", help="ignore events after this date")
    bt.add_argument("--report", required=True, metavar="OUT.json")
    bt.add_argument("--customers", metavar="OUT.jsonl", help="every customer's final state")
    bt.add_argument(
        "--holdout",
        metavar="DAYS",
        help="hold the last DAYS out (e.g. 90d) and check the predictions made before them",
    )
    bt.add_argument(
        "--holdout-until",
        metavar="YYYY-MM-DD",
        help="check the predictions made at the end of --until against the days through this",
    )
    bt.add_argument(
        "--holdout-customers",
        metavar="OUT.csv",
        help="the holdout test's row per customer: its predictions and what came",
    )
    bt.add_argument(
        "--plot", metavar="FILE.png", help="draw the holdout's purchases by repeat days"
    )
    bt.add_argument(
        "--by",
        choices=BREAKDOWNS,
        help="the rows and cohorts also per value of a customer attribute (in the report)",
    )
    bt.set_defaults(func=cmd_backtest)

    notify = sub.add_parser("notify", parents=[common], help="deliver alerts to subscribers")
    notify.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="notifications.yml (or RETENTION_NOTIFICATIONS_FILE)",
    )
    notify.add_argument("--check", action="store_true", help="validate the file and exit")
    notify.set_defaults(func=cmd_notify)

    ms = sub.add_parser("metrics-server", parents=[common], help="serve /metrics read from Redis")
    ms.add_argument(
        "--host", default="127.0.0.1", help="bind address; 0.0.0.0 to be reached from elsewhere"
    )
    ms.add_argument("--port", type=int, default=9465)
    ms.set_defaults(func=cmd_metrics_server)

    ingest = sub.add_parser("ingest", parents=[common], help="serve the HTTP ingest API")
    ingest.add_argument(
        "--host", default="127.0.0.1", help="bind address; 0.0.0.0 to be reached from elsewhere"
    )
    ingest.add_argument("--port", type=int, default=8088)
    ingest.set_defaults(func=cmd_ingest)

    keys = sub.add_parser("keys", help="API keys of the HTTP server (ingest, read, admin)")
    key_actions = keys.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser(
        "create", parents=[common], help="make a key and print it, once"
    )
    create.add_argument("name")
    create.add_argument(
        "--scope",
        action="append",
        choices=["ingest", "read", "admin"],
        help="what the key may do: ingest (write events, the default), read, admin; repeat "
        "for several",
    )
    key_actions.add_parser(
        "list", parents=[common], help="key names, their scopes and when they were made"
    )
    revoke = key_actions.add_parser(
        "revoke", parents=[common], help="delete a key: it stops working"
    )
    revoke.add_argument("name")
    keys.set_defaults(func=cmd_keys)

    demo = sub.add_parser("demo", parents=[common], help="send demo traffic")
    demo.add_argument("--customers", type=int, default=60)
    demo.add_argument("--rate", type=float, default=5.0, help="live events per second")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=cmd_demo)

    inbox = sub.add_parser(
        "demo-inbox",
        parents=[common],
        help="receive the demo's webhook, Slack and email messages into files",
    )
    inbox.add_argument("--folder", type=Path, required=True)
    inbox.add_argument("--http-port", type=int, required=True)
    inbox.add_argument("--smtp-port", type=int, required=True)
    inbox.set_defaults(func=cmd_demo_inbox)
    return parser


#: What a shell reports for a process ended by SIGPIPE (128 + 13): its reader went away.
SIGPIPE_EXIT = 141


def main(argv: list[str] | None = None) -> int:
    """The process's entry point (``retention``, ``python -m retention.cli``): it runs one
    command, and the process ends when it returns."""
    args = build_parser().parse_args(argv)
    logs.setup("WARNING" if args.log_level == "warn" else args.log_level.upper())
    try:
        code: int = args.func(args)
        # what is still buffered goes out now, where a closed pipe can be told apart
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`retention export ... | head`): no traceback, and nothing
        # more to write; what is still buffered goes to /dev/null at exit instead of
        # failing again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return SIGPIPE_EXIT
    except Exception as exc:
        if not _refused(exc):
            raise
        print(f"retention: {exc}", file=sys.stderr)
        return 2
    finally:
        # The interpreter's collections at exit would walk every object pydantic, Redis and
        # the command made (about 60 ms of a read command's 0.35 s); frozen, they are left
        # to the process's end. Nothing runs after this but the exit.
        gc.freeze()
    return code


def _refused(exc: Exception) -> bool:
    """Whether ``exc`` says what to do instead (no services found, a store laid out for
    another shard count); imported only now, since most commands never raise them."""
    from retention.services import NoServices
    from store.shards import LayoutMismatch

    return isinstance(exc, NoServices | LayoutMismatch)


if __name__ == "__main__":
    sys.exit(main())
