"""How the store scales with its customers: memory, scrape, refit and evaluation.

    .venv/bin/python bench/scale_customers.py [--customers 250000,500000,1000000]
                                              [--evaluate-sample 50000]
                                              [--arrival backfill|live] [--ids short|uuid]
                                              [--attributes]
                                              [--seed 7] [--json] [--keep-logs]

Synthetic customers, written straight through ``Store.apply_batch`` (no Kafka) into a fresh
one-shard store on one redis-server started for the run, at each ``--customers`` size. Each
customer places 1 to 6 orders (2.5 on average) at random times over the past year. With
``--arrival backfill`` (the default) the year is loaded at once, customer after customer,
every batch applied now: the worst case for memory, since every dedupe digest is still
within its horizon and every day's activity bitmap reaches the last customer number. With
``--arrival live`` the same orders come in time order, each batch applied at its newest
event's time, as a year of live traffic would: customers are numbered as they first appear,
and digests older than the horizon have been swept. Customer ids are ten characters
(``c-00000042``), or UUIDs with ``--ids uuid``. With ``--attributes`` every order carries a
country (8), a channel (3) and a shop (5), and one in five moves its customer to another
country. Then: the periods that have ended closed as
the leader closes them (``store.periods.Periods.close``), Redis bytes per customer
(used_memory growth before and after closing, and MEMORY USAGE of a sample of keys by family
after), one exporter scrape (``retention.snapshot.read_snapshot``, as the exporter reads
Redis), the BG/NBD refit (``store.models.refit``), and evaluation of the due customers
(``Evaluator.run_once`` until none are due). Evaluation is timed over the first
``--evaluate-sample`` due customers; the time for all of them is the count divided by that
rate. Each figure's growth between the smallest and the largest size is shown as a ratio
and as a slope per customer, and the slope extrapolates it to 10M customers. Printed as a
table, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common

from processors.forecast import model_options
from processors.lifecycle import LifecyclePolicy
from processors.windows import PERIODS
from retention import runtime
from retention.config import Settings
from retention.snapshot import read_snapshot
from store.evaluations import Evaluator
from store.models import refit
from store.periods import Periods
from store.store import Store
from streams.risk_file import load_policy

logger = logging.getLogger("bench.scale_customers")

TARGET_CUSTOMERS = 10_000_000
MEMORY_SAMPLE_KEYS = 20_000  # per key family
SCRAPE_REPEATS = 3
WARM_UP_CUSTOMERS = 2000


#: How the synthetic year of orders reaches the store (``--arrival``).
ARRIVALS = {
    "backfill": "a year of history loaded at once, customer by customer",
    "live": "a year of orders in time order, each batch at its newest event's time",
}


@dataclass(frozen=True)
class Options(common.RunOptions):
    sizes: tuple[int, ...]
    evaluate_sample: int
    arrival: str = "backfill"
    ids: str = "short"
    attributes: bool = False


# --- loading --------------------------------------------------------------------------


# --- measuring ------------------------------------------------------------------------


async def sampled_families(redis: Redis, prefix: str, seed: int) -> dict[str, dict[str, float]]:
    """Keys by family (counted exactly) and their bytes, from MEMORY USAGE of a sample of
    each family's keys (every key of a small family)."""
    by_family: dict[str, list[str]] = {}
    async for key in redis.scan_iter(match=f"{prefix}*", count=10_000):
        by_family.setdefault(key[len(prefix) :].split(":", 1)[0], []).append(key)
    rng = random.Random(seed)
    out = {}
    for name, keys in by_family.items():
        sample = rng.sample(keys, min(MEMORY_SAMPLE_KEYS, len(keys)))
        sizes = await common.memory_usage(redis, sample)
        out[name] = {"keys": len(keys), "bytes": len(keys) * statistics.fmean(sizes)}
    return dict(sorted(out.items(), key=lambda item: -item[1]["bytes"]))


@dataclass
class SizeRun:
    customers: int
    events: int
    load_seconds: float
    used_memory_growth: int
    open_memory_growth: int
    close_seconds: float
    families: dict[str, dict[str, float]]
    scrape_seconds: list[float]
    refit_seconds: float
    refit_buyers: int
    evaluated: int
    evaluate_seconds: float
    evaluate_memory_growth: int
    due_left: int
    evaluate_error: str = ""

    @property
    def bytes_per_customer(self) -> float:
        return self.used_memory_growth / self.customers

    @property
    def evaluated_memory(self) -> float:
        """used_memory once every customer has been evaluated once: each evaluation keeps
        a little state per customer (its last result, its next time), measured on those
        evaluated and scaled to all."""
        return self.used_memory_growth + self.evaluate_memory_growth * self.customers / max(
            1, self.evaluated
        )

    @property
    def evaluated_bytes_per_customer(self) -> float:
        return self.evaluated_memory / self.customers

    @property
    def scrape_best(self) -> float:
        return min(self.scrape_seconds)

    @property
    def evaluate_rate(self) -> float:
        return self.evaluated / max(1e-9, self.evaluate_seconds)

    @property
    def evaluate_all_seconds(self) -> float:
        return self.customers / max(1e-9, self.evaluate_rate)


async def size_run(options: Options, url: str, customers: int) -> SizeRun:
    redis = Redis.from_url(url, decode_responses=True)
    try:
        await redis.flushall()
        # the size before may still be freeing in the background
        while int((await redis.info("memory")).get("lazyfree_pending_objects", 0)):
            await asyncio.sleep(0.5)
        prefix = f"syn-{customers}:"
        settings = Settings(redis_url=url, key_prefix=prefix)
        store = Store(redis, prefix, settings.activity_kinds, writer=True)
        before = int((await redis.info("memory"))["used_memory"])
        events, load_seconds = await common.load_customers(
            store, customers, options.seed, options.arrival, options.ids, options.attributes
        )
        open_growth = int((await redis.info("memory"))["used_memory"]) - before
        if await store.customer_count() != customers:
            raise common.BenchError(f"the store tracks {await store.customer_count()} customers")
        logger.warning("synthetic %d: loaded %d orders in %.0f s", customers, events, load_seconds)
        # the leader closes every period that has ended, as it works off a backlog
        started = time.monotonic()
        periods = Periods(redis, prefix)
        closed = 0
        for period in PERIODS:
            closed += len(await periods.close(period, datetime.now(UTC), limit=None))
        close_seconds = time.monotonic() - started
        growth = int((await redis.info("memory"))["used_memory"]) - before
        logger.warning(
            "synthetic %d: closed %d periods in %.1f s", customers, closed, close_seconds
        )
        families = await sampled_families(redis, prefix, options.seed)

        # the exporter's read, as one scrape does it (no broker: lag is not read)
        scrapes = []
        for _ in range(SCRAPE_REPEATS):
            started = time.monotonic()
            snap = await read_snapshot(settings, redis, None, datetime.now(UTC))
            scrapes.append(time.monotonic() - started)
            if snap.tracked_customers != customers:
                raise common.BenchError(f"a scrape saw {snap.tracked_customers} customers")

        started = time.monotonic()
        fit = await refit(store, date.today(), model_options(settings))
        refit_seconds = time.monotonic() - started
        if fit is None:
            raise common.BenchError("refit found no buyers")
        buyers = fit.customers

        # evaluation with the fit in place, as a worker evaluates after its first refit
        evaluator = Evaluator(
            store,
            load_policy(settings.risk_file),
            LifecyclePolicy(churn_after_days=settings.churn_after_days),
        )
        evaluated = 0
        before_evaluation = int((await redis.info("memory"))["used_memory"])
        started = time.monotonic()
        now = datetime.now(UTC)
        evaluate_error = ""
        try:
            while evaluated < options.evaluate_sample:
                done = await evaluator.run_once(now, settings.evaluate_batch)
                if done == 0:
                    break
                evaluated += done
        except RedisError as exc:  # reported with the figures, not hidden
            evaluate_error = repr(exc)
            logger.warning("synthetic %d: evaluation failed: %r", customers, exc)
        evaluate_seconds = time.monotonic() - started
        after_evaluation = int((await redis.info("memory"))["used_memory"])
        due_left = int(await redis.llen(prefix + "dueq"))  # changed customers still waiting
        return SizeRun(
            customers=customers,
            events=events,
            load_seconds=load_seconds,
            used_memory_growth=growth,
            open_memory_growth=open_growth,
            close_seconds=close_seconds,
            families=families,
            scrape_seconds=scrapes,
            refit_seconds=refit_seconds,
            refit_buyers=buyers,
            evaluated=evaluated,
            evaluate_seconds=evaluate_seconds,
            evaluate_memory_growth=after_evaluation - before_evaluation,
            evaluate_error=evaluate_error,
            due_left=due_left,
        )
    finally:
        # in the background: a synchronous flush of 10M customers outlasts a client's wait
        await redis.flushall(asynchronous=True)
        await redis.aclose()


async def run_synthetic(options: Options, url: str) -> list[SizeRun]:
    # a small store first, thrown away: the fit's first call pays for imports and warm-up
    await size_run(replace(options, evaluate_sample=WARM_UP_CUSTOMERS), url, WARM_UP_CUSTOMERS)
    runs = []
    for n in options.sizes:
        runs.append(await size_run(options, url, n))
        # each size's figures as soon as they are known: a long run that fails later
        # still leaves them in the log
        logger.warning("synthetic %d: %s", n, json.dumps(asdict(runs[-1])))
    return runs


# --- output ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Growth:
    name: str
    unit: str
    values: list[float]
    small: float
    large: float
    slope: float  # per customer
    at_target: float

    @property
    def ratio(self) -> float:
        return self.large / self.small if self.small else float("nan")


def growth(name: str, unit: str, sizes: Sequence[int], values: Sequence[float]) -> Growth:
    """Least-squares line through (customers, value); extrapolated to TARGET_CUSTOMERS."""
    if len(sizes) > 1:
        slope, intercept = statistics.linear_regression(sizes, values)
    else:
        slope, intercept = values[0] / sizes[0], 0.0
    return Growth(
        name,
        unit,
        list(values),
        values[0],
        values[-1],
        slope,
        intercept + slope * TARGET_CUSTOMERS,
    )


def growths(sizes: Sequence[SizeRun]) -> list[Growth]:
    n = [s.customers for s in sizes]
    memory = growth("Redis used_memory", "MB", n, [s.used_memory_growth / 1e6 for s in sizes])
    evaluated = growth(
        "Redis used_memory, evaluated", "MB", n, [s.evaluated_memory / 1e6 for s in sizes]
    )
    evaluate_all = growth("evaluate all due", "s", n, [s.evaluate_all_seconds for s in sizes])
    per_customer = growth("Redis B / customer", "B", n, [s.bytes_per_customer for s in sizes])
    open_memory = growth(
        "Redis used_memory, open", "MB", n, [s.open_memory_growth / 1e6 for s in sizes]
    )
    per_open = growth(
        "  before closing periods", "B", n, [s.open_memory_growth / s.customers for s in sizes]
    )
    per_evaluated = growth(
        "Redis B / customer, evaluated", "B", n, [s.evaluated_bytes_per_customer for s in sizes]
    )
    rate = growth("evaluation rate", "cust/s", n, [s.evaluate_rate for s in sizes])
    # figures per customer are extrapolated from the line through their totals
    target = TARGET_CUSTOMERS
    per_customer = replace(per_customer, at_target=memory.at_target * 1e6 / target)
    per_evaluated = replace(per_evaluated, at_target=evaluated.at_target * 1e6 / target)
    per_open = replace(per_open, at_target=open_memory.at_target * 1e6 / target)
    rate = replace(rate, at_target=target / evaluate_all.at_target)
    return [
        per_customer,
        per_open,
        per_evaluated,
        memory,
        growth("closing every period", "s", n, [s.close_seconds for s in sizes]),
        growth("exporter scrape (best of 3)", "s", n, [s.scrape_best for s in sizes]),
        growth("BG/NBD refit", "s", n, [s.refit_seconds for s in sizes]),
        rate,
        evaluate_all,
        growth("direct load (apply_batch)", "ord/s", n, [s.events / s.load_seconds for s in sizes]),
    ]


def fmt(value: float) -> str:
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def render_sizes(sizes: Sequence[SizeRun]) -> list[str]:
    heads = "".join(f"{s.customers:>13,}" for s in sizes)
    lines = [f"{'figure':<30}{'unit':<9}{heads}{'ratio':>8}{'slope / 1M cust':>17}{'at 10M':>12}"]
    for g in growths(sizes):
        values = "".join(f"{fmt(v):>13}" for v in g.values)
        lines.append(
            f"{g.name:<30}{g.unit:<9}{values}{g.ratio:>7.2f}x"
            f"{fmt(g.slope * 1e6):>17}{fmt(g.at_target):>12}"
        )
    last = sizes[-1]
    lines += ["", f"MEMORY USAGE by key family at {last.customers:,} customers (sampled):"]
    for name, fam in last.families.items():
        lines.append(
            f"  {name + ':':<10}{int(fam['keys']):>10,} keys"
            f"{fam['bytes'] / last.customers:>8,.0f} B per customer"
        )
    lines.append("  (used_memory also counts the keyspace's own tables, outside MEMORY USAGE)")
    lines.append(
        "evaluation timed over "
        + ", ".join(f"{s.evaluated:,} of {s.customers:,}" for s in sizes)
        + " due customers; 'evaluate all due' = customers / that rate"
    )
    for size in sizes:
        if size.evaluate_error:
            lines.append(
                f"EVALUATION FAILED at {size.customers:,} after {size.evaluated:,}: "
                f"{size.evaluate_error}"
            )
    lines.append(
        "orders per customer: "
        + ", ".join(f"{s.events / s.customers:.2f}" for s in sizes)
        + "; refit buyers: "
        + ", ".join(f"{s.refit_buyers:,}" for s in sizes)
    )
    return lines


def render(options: Options, sizes: Sequence[SizeRun], elapsed: float) -> str:
    return "\n".join(
        [
            common.headline(__file__, elapsed),
            "",
            "Synthetic customers via Store.apply_batch into one redis-server, one shard,"
            f" {ARRIVALS[options.arrival]}, {options.ids} customer ids;"
            " slope: least-squares line over the sizes, extrapolated to 10M",
            "(per-customer figures and the rate at 10M come from the line through the totals;"
            " 'evaluated': used_memory once each customer has been evaluated, scaled from those"
            " evaluated)",
            *render_sizes(sizes),
        ]
    )


def as_json(options: Options, sizes: Sequence[SizeRun], elapsed: float) -> str:
    doc = {
        "options": asdict(options),
        "elapsed_seconds": elapsed,
        "synthetic": [
            {
                **asdict(s),
                "bytes_per_customer": s.bytes_per_customer,
                "scrape_best_seconds": s.scrape_best,
                "evaluate_customers_per_second": s.evaluate_rate,
                "evaluate_all_seconds": s.evaluate_all_seconds,
            }
            for s in sizes
        ],
        "growth": [
            {**asdict(g), "ratio": g.ratio, "target_customers": TARGET_CUSTOMERS}
            for g in growths(sizes)
        ],
    }
    return json.dumps(doc, indent=2)


# --- command line ---------------------------------------------------------------------


def parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted(int(part.replace("_", "")) for part in text.split(",") if part))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected sizes such as 250000,500000: {text!r}") from exc
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--customers",
        type=parse_sizes,
        default=(250_000, 500_000, 1_000_000),
        help="store sizes, comma-separated",
    )
    parser.add_argument(
        "--evaluate-sample", type=int, default=50_000, help="due customers evaluated per size"
    )
    parser.add_argument(
        "--arrival", choices=tuple(ARRIVALS), default="backfill", help="how the year is loaded"
    )
    parser.add_argument(
        "--ids", choices=tuple(common.CUSTOMER_IDS), default="short", help="customer ids' shape"
    )
    parser.add_argument(
        "--attributes",
        action="store_true",
        help="every order carries a country, a channel and a shop",
    )
    common.add_run_options(parser)
    args = parser.parse_args(argv)
    if args.evaluate_sample < 1:
        parser.error("--evaluate-sample must be positive")
    return Options(
        **common.run_options(args),
        sizes=args.customers,
        evaluate_sample=args.evaluate_sample,
        arrival=args.arrival,
        ids=args.ids,
        attributes=args.attributes,
    )


def measure(options: Options, log_dir: Path) -> list[SizeRun]:
    redis, url = runtime.start_redis(log_dir / "redis", log_dir, durable=False)
    try:
        return asyncio.run(run_synthetic(options, url))
    finally:
        redis.stop()


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    return common.run_benchmark(options, "retention-scale-customers-", measure, render, as_json)


if __name__ == "__main__":
    sys.exit(main())
