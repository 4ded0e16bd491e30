"""The Grafana dashboards, built in code and written to grafana/dashboards/*.json.

`make dashboards` runs this file; the JSON it writes is committed and provisioned by
grafana/provisioning/, and tests/unit/test_dashboards.py fails when the two drift apart.

Every panel reads the Prometheus picked by the ``datasource`` variable and the targets
picked by ``job`` and ``instance``; the period panels of the overview also follow
``period``. Money is shown as a plain number with two decimals under a title that names
the ``currency`` variable (a text box, ``USD`` by default): Grafana's currency units are
one per currency, while the reporting currency is a setting of the tracker
(``RETENTION_REPORTING_CURRENCY``), so the viewer types it once instead of a dashboard
per currency.

Where an alert fires on a fixed number, the panel draws that number as its threshold, read
from the alert's ``expr`` in prometheus/rules/retention.yml; a missing alert or a changed
comparison stops the build rather than draw a stale line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, table
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import prometheus as prometheus_models

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "prometheus" / "rules" / "retention.yml"
OUT = ROOT / "grafana" / "dashboards"

DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
#: Every series selector carries these, so that the job and instance variables apply.
TARGET = 'job=~"$job", instance=~"$instance"'
PERIOD = 'period=~"$period"'
#: Grafana's rate window: at least four scrape intervals of the data source.
RATE = "$__rate_interval"


class RuleError(RuntimeError):
    """An alert the dashboards take a threshold from is missing or no longer compares."""


# --- thresholds from the alert rules ------------------------------------------------------


def alert_exprs(path: Path = RULES) -> dict[str, str]:
    """``expr`` of every alert in a rule file, by alert name."""
    found: dict[str, str] = {}
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                found[rule["alert"]] = rule["expr"]
    return found


def alert_threshold(exprs: dict[str, str], alert: str, series: str, op: str) -> float:
    """The number ``series`` is compared with by ``op`` in the expression of ``alert``.

    The series may carry matchers and sit inside an aggregation (``max(series) > 0``).
    """
    if alert not in exprs:
        raise RuleError(f"{RULES.name} has no alert {alert}; the dashboards draw its threshold")
    pattern = (
        rf"{re.escape(series)}(?:\{{[^}}]*\}})?\)?\s*{re.escape(op)}\s*"
        r"([0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)(?![0-9.])(?!\s*[*/])"
    )
    match = re.search(pattern, exprs[alert])
    if match is None:
        raise RuleError(f"{alert} no longer compares {series} {op} a number: {exprs[alert]!r}")
    return float(match.group(1))


@dataclass(frozen=True)
class Thresholds:
    """The alert numbers the panels draw; names say which alert each comes from."""

    crr_below: float
    lag_above: float
    no_events_age_above: float
    stalled_above: float
    no_live_worker_at: float
    evaluation_wait_above: float
    evaluation_backlog_above: float
    exporter_source_down_at: float

    @classmethod
    def from_rules(cls, path: Path = RULES) -> Thresholds:
        exprs = alert_exprs(path)
        return cls(
            crr_below=alert_threshold(exprs, "RetentionCRRBelowTarget", "retention_crr_ratio", "<"),
            lag_above=alert_threshold(
                exprs, "RetentionConsumerLagGrowing", "retention_consumer_lag_messages", ">"
            ),
            no_events_age_above=alert_threshold(
                exprs, "RetentionNoEventsReceived", "retention_last_event_age_seconds", ">"
            ),
            stalled_above=alert_threshold(
                exprs, "RetentionWorkerStalled", "retention_workers_stalled", ">"
            ),
            no_live_worker_at=alert_threshold(
                exprs, "RetentionNoLiveWorker", "retention_workers_alive", "=="
            ),
            evaluation_wait_above=alert_threshold(
                exprs, "RetentionEvaluationBehind", "retention_evaluation_wait_seconds", ">"
            ),
            evaluation_backlog_above=alert_threshold(
                exprs,
                "RetentionEvaluationBacklogGrowing",
                "retention_evaluation_waiting_customers",
                ">",
            ),
            exporter_source_down_at=alert_threshold(
                exprs, "RetentionExporterRedisUnreadable", "retention_exporter_source_up", "=="
            ),
        )


# --- small builders -----------------------------------------------------------------------


def sel(metric: str, *matchers: str) -> str:
    """``metric{matchers..., job=~"$job", instance=~"$instance"}``."""
    return f"{metric}{{{', '.join([*matchers, TARGET])}}}"


def query(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    )


def queries(*pairs: tuple[str, str]) -> list[Builder[Any]]:
    """(expr, legend) pairs as targets A, B, C, ..."""
    return [query(expr, legend, chr(ord("A") + n)) for n, (expr, legend) in enumerate(pairs)]


def steps(*pairs: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    """Absolute threshold steps: (from value, colour); the first starts at None."""
    return (
        dashboard.ThresholdsConfig()
        .mode(models.ThresholdsMode.ABSOLUTE)
        .steps([models.Threshold(value=value, color=color) for value, color in pairs])
    )


GREEN = steps((None, "green"))


def series(
    title: str,
    description: str,
    targets: list[Builder[Any]],
    unit: str,
    w: int,
    h: int,
    *,
    thresholds: dashboard.ThresholdsConfig | None = None,
    style: common_models.GraphTresholdsStyleMode = common_models.GraphTresholdsStyleMode.DASHED,
    decimals: int | None = None,
    bounds: tuple[float, float] | None = None,
) -> ts.Panel:
    """A time series panel; with thresholds, they are drawn as lines on the graph."""
    panel = (
        ts.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(targets)
        .unit(unit)
        .span(w)
        .height(h)
        .legend(
            common.VizLegendOptions()
            .display_mode(common_models.LegendDisplayMode.LIST)
            .placement(common_models.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    if thresholds is not None:
        panel.thresholds(thresholds).thresholds_style(
            common.GraphThresholdsStyleConfig().mode(style)
        )
    if decimals is not None:
        panel.decimals(decimals)
    if bounds is not None:
        panel.min(bounds[0]).max(bounds[1])
    return panel


def single(
    title: str,
    description: str,
    targets: list[Builder[Any]],
    unit: str,
    w: int,
    h: int,
    *,
    thresholds: dashboard.ThresholdsConfig = GREEN,
    decimals: int | None = None,
    mappings: list[models.ValueMapping] | None = None,
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(targets)
        .unit(unit)
        .thresholds(thresholds)
        .span(w)
        .height(h)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .text_mode(common_models.BigValueTextMode.VALUE_AND_NAME)
    )
    if decimals is not None:
        panel.decimals(decimals)
    if mappings is not None:
        panel.mappings(mappings)
    return panel


def bars(
    title: str,
    description: str,
    targets: list[Builder[Any]],
    unit: str,
    w: int,
    h: int,
    *,
    thresholds: dashboard.ThresholdsConfig = GREEN,
    decimals: int | None = None,
    bounds: tuple[float, float] | None = None,
) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(targets)
        .unit(unit)
        .thresholds(thresholds)
        .span(w)
        .height(h)
        .orientation(common_models.VizOrientation.HORIZONTAL)
        .display_mode(common_models.BarGaugeDisplayMode.BASIC)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if decimals is not None:
        panel.decimals(decimals)
    if bounds is not None:
        panel.min(bounds[0]).max(bounds[1])
    return panel


def rule_note(alert: str) -> str:
    return f" The line is where {alert} fires (prometheus/rules/retention.yml)."


def up_mapping() -> list[models.ValueMapping]:
    return [
        models.ValueMap(
            options={
                "0": models.ValueMappingResult(text="unreachable", color="red"),
                "1": models.ValueMappingResult(text="reached", color="green"),
            }
        )
    ]


# --- variables ------------------------------------------------------------------------------


def label_values(name: str, label: str, selector: str, text: str) -> dashboard.QueryVariable:
    """A multi-value query variable whose "All" is the regex ``.*``."""
    return (
        dashboard.QueryVariable(name)
        .label(text)
        .datasource(DATASOURCE)
        .query(
            {
                "qryType": 1,
                "query": f"label_values({selector}, {label})",
                "refId": f"{name}-values",
            }
        )
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(models.VariableOption(selected=True, text="All", value="$__all"))
    )


def target_variables() -> list[Builder[models.VariableModel]]:
    """The data source, then the scrape jobs of the tracker, then their instances."""
    return [
        dashboard.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(models.VariableOption(selected=True, text="Prometheus", value="prometheus")),
        label_values("job", "job", 'up{job=~"retention.*"}', "Job"),
        label_values("instance", "instance", 'up{job=~"$job"}', "Instance"),
    ]


def overview_variables() -> list[Builder[models.VariableModel]]:
    return [
        *target_variables(),
        label_values("period", "period", sel("retention_crr_ratio"), "Period"),
        label_values(
            "attribute", "attribute", sel("retention_attribute_customers"), "Customer attribute"
        ),
        label_values(
            "value",
            "value",
            sel("retention_breakdown_end_customers", 'attribute=~"$attribute"'),
            "Value",
        ),
        dashboard.TextBoxVariable("currency")
        .label("Currency")
        .description("The reporting currency of the tracker (RETENTION_REPORTING_CURRENCY).")
        .default_value("USD")
        .current(models.VariableOption(selected=True, text="USD", value="USD")),
    ]


def base(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["retention"])
        .timezone("utc")
        .readonly()
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-24h", "now")
        # Grafana reads annotations.list; an empty list keeps only its built-in one
        .annotations([])
    )


def place(board: dashboard.Dashboard, rows: Iterable[tuple[str, Sequence[Builder[Any]]]]) -> None:
    """Rows in order, each followed by its panels, left to right."""
    for title, panels in rows:
        board.with_row(dashboard.Row(title))
        for panel in panels:
            board.with_panel(panel)


# --- the retention overview ----------------------------------------------------------------


def overview(limits: Thresholds) -> dashboard.Dashboard:
    board = base(
        "retention-overview",
        "Retention overview",
        "CRR, churn, active customers, lifecycle, risk, revenue and cohorts.",
    )
    for variable in overview_variables():
        board.with_variable(variable)
    place(
        board,
        [
            ("Retention", retention_panels(limits)),
            ("Risk and notifications", risk_panels()),
            ("Revenue", revenue_panels()),
            ("Cohorts", cohort_panels()),
            ("Markets", market_panels()),
            ("Customer service", service_panels()),
        ],
    )
    return board


def retention_panels(limits: Thresholds) -> list[Builder[Any]]:
    target = f"{limits.crr_below:.0%}"
    return [
        series(
            f"Customer retention rate (CRR), target {target}",
            "CRR = (|E| - |N|) / |S| per period (docs/metrics.md). The red band is below "
            f"the {target} target." + rule_note("RetentionCRRBelowTarget"),
            queries(
                (sel("retention_crr_ratio", 'window="current"', PERIOD), "{{period}} (open)"),
                (
                    sel("retention_crr_ratio", 'window="last_closed"', PERIOD),
                    "{{period}} (last closed)",
                ),
            ),
            "percentunit",
            12,
            8,
            thresholds=steps((None, "red"), (limits.crr_below, "green")),
            style=common_models.GraphTresholdsStyleMode.LINE_AND_AREA,
            bounds=(0, 1),
        ),
        series(
            "Churn rate",
            "|S \\ E| / |S|: customers active at the start and no longer at the end. "
            "RetentionChurnSpike compares the last closed period with the one before.",
            queries(
                (sel("retention_churn_ratio", 'window="current"', PERIOD), "{{period}} (open)"),
                (
                    sel("retention_churn_ratio", 'window="last_closed"', PERIOD),
                    "{{period}} (last closed)",
                ),
                (
                    sel("retention_churn_ratio", 'window="previous_closed"', PERIOD),
                    "{{period}} (closed before)",
                ),
            ),
            "percentunit",
            12,
            8,
        ),
        single(
            "Active customers (DAU / WAU / MAU)",
            "Distinct customers with activity in the current day, ISO week and month.",
            queries((sel("retention_active_customers", PERIOD), "{{period}}")),
            "short",
            8,
            5,
        ),
        single(
            "Tracked customers",
            "Customers the tracker has ever seen.",
            queries((sel("retention_tracked_customers"), "customers")),
            "short",
            4,
            5,
        ),
        bars(
            "Lifecycle funnel",
            "Customers by lifecycle state: new, active, at risk, churned, reactivated.",
            queries((sel("retention_customers"), "{{state}}")),
            "short",
            12,
            5,
        ),
        series(
            "New, lost and reactivated customers (last closed period)",
            "N, S \\ E and E \\ S \\ N of the newest closed day, week and month.",
            queries(
                (sel("retention_new_customers", 'window="last_closed"', PERIOD), "new, {{period}}"),
                (
                    sel("retention_lost_customers", 'window="last_closed"', PERIOD),
                    "lost, {{period}}",
                ),
                (
                    sel("retention_reactivated_customers", 'window="last_closed"', PERIOD),
                    "reactivated, {{period}}",
                ),
            ),
            "short",
            12,
            8,
        ),
        series(
            "Customers at the start and end of the open period",
            "S and E of the open periods.",
            queries(
                (
                    sel("retention_period_start_customers", 'window="current"', PERIOD),
                    "start, {{period}}",
                ),
                (
                    sel("retention_period_end_customers", 'window="current"', PERIOD),
                    "end so far, {{period}}",
                ),
            ),
            "short",
            12,
            8,
        ),
    ]


def risk_panels() -> list[Builder[Any]]:
    returned = sel("retention_alert_outcomes", 'outcome="returned"')
    decided = sel("retention_alert_outcomes", 'outcome=~"returned|not_returned"')
    outcomes = f"sum by (kind, band) ({returned}) / sum by (kind, band) ({decided})"
    return [
        bars(
            "At-risk customers by reason",
            "A customer with several reasons counts under each.",
            queries((sel("retention_at_risk_customers"), "{{reason}}")),
            "short",
            10,
            7,
        ),
        single(
            "High-value customers at risk",
            "Top share by predicted CLTV, at risk. Alerted on by "
            "RetentionHighValueCustomerAtRisk when their number grows.",
            queries((sel("retention_high_value_at_risk_customers"), "high value")),
            "short",
            4,
            7,
            thresholds=steps((None, "green"), (1, "red")),
        ),
        series(
            "Notifications per second",
            "Sent, failed and suppressed notifications by channel.",
            queries(
                (
                    f"sum by (channel, outcome) "
                    f"(rate({sel('retention_notifications_total')}[{RATE}]))",
                    "{{channel}} {{outcome}}",
                )
            ),
            "ops",
            10,
            7,
        ),
        bars(
            "Customers by risk band",
            "Every evaluated customer in the band of its risk score; the bands' thresholds "
            "are in the risk file.",
            queries((sel("retention_risk_band_customers"), "{{band}}")),
            "short",
            10,
            7,
        ),
        bars(
            "Did the alerts work: customers who ordered again after an alert",
            "Per alert kind and risk band, the share of alerts whose customer ordered within "
            "the outcome window after it (default 30 days), of the alerts whose window is "
            "over or whose customer came back. `retention alerts --outcomes` shows the counts.",
            queries((outcomes, "{{kind}} ({{band}})")),
            "percentunit",
            14,
            7,
            thresholds=steps((None, "red"), (0.2, "yellow"), (0.4, "green")),
            bounds=(0, 1),
        ),
    ]


def revenue_panels() -> list[Builder[Any]]:
    both = 'window=~"current|last_closed"'
    return [
        series(
            "Revenue ($currency)",
            "Placed minus refunded amounts, in the reporting currency.",
            queries(
                (sel("retention_period_revenue", 'window="current"', PERIOD), "{{period}} (open)"),
                (
                    sel("retention_period_revenue", 'window="last_closed"', PERIOD),
                    "{{period}} (last closed)",
                ),
            ),
            "short",
            12,
            7,
            decimals=2,
        ),
        series(
            "Average order value ($currency)",
            "Placed amount per placed order, in the reporting currency.",
            queries(
                (sel("retention_average_order_value", both, PERIOD), "{{period}} ({{window}})")
            ),
            "short",
            12,
            7,
            decimals=2,
        ),
        series(
            "Purchase frequency",
            "Placed orders per distinct buyer.",
            queries((sel("retention_purchase_frequency", both, PERIOD), "{{period}} ({{window}})")),
            "none",
            12,
            7,
        ),
        series(
            "Repeat customer rate",
            "Share of buyers with two or more orders in the period.",
            queries(
                (sel("retention_repeat_customer_ratio", both, PERIOD), "{{period}} ({{window}})")
            ),
            "percentunit",
            12,
            7,
        ),
        single(
            "Predicted CLTV ($currency)",
            "Predicted lifetime value of all evaluated customers over the configured horizon "
            "(RETENTION_CLTV_MONTHS, discounted monthly), in the reporting currency.",
            queries((sel("retention_predicted_cltv"), "predicted CLTV")),
            "short",
            8,
            7,
            decimals=2,
        ),
        bars(
            "CLTV at risk by reason ($currency)",
            "Predicted CLTV x risk score of at-risk customers, by risk reason; a customer "
            "with several reasons counts under each. The at-risk list is ranked by the same "
            "product.",
            queries((sel("retention_cltv_at_risk"), "{{reason}}")),
            "short",
            16,
            7,
            decimals=2,
        ),
    ]


def market_panels() -> list[Builder[Any]]:
    picked = ('attribute=~"$attribute"', 'value=~"$value"')

    def by_value(metric: str) -> list[Builder[Any]]:
        return queries(
            (sel(metric, *picked, 'window="current"'), "{{attribute}} {{value}}: this month"),
            (sel(metric, *picked, 'window="last_closed"'), "{{attribute}} {{value}}: last month"),
        )

    note = (
        " Each customer counts under the latest value its orders and logins carried, with all "
        "its history; the values with the most customers (RETENTION_ATTRIBUTE_TOP), every "
        "other customer as other. Counted again every 5 minutes."
    )
    return [
        bars(
            "Customers by latest country, channel and shop",
            "Each customer counted under the latest value its orders and logins carried "
            "(docs/events.md), for the attributes the variable picks; the values with the "
            "most customers, the rest as other (RETENTION_ATTRIBUTE_TOP).",
            queries(
                (
                    sel("retention_attribute_customers", 'attribute=~"$attribute"'),
                    "{{attribute}}: {{value}}",
                ),
            ),
            "short",
            24,
            8,
            decimals=0,
        ),
        bars(
            "Churn rate by value (month)",
            "Customers active at the month's start and not at its end, over those active at "
            "its start, for the values the variables pick." + note,
            by_value("retention_breakdown_churn_ratio"),
            "percentunit",
            8,
            10,
            decimals=1,
            bounds=(0, 1),
        ),
        bars(
            "Active customers at the month's end by value",
            "Customers active within the churn window before the month's end (E), for the "
            "values the variables pick." + note,
            by_value("retention_breakdown_end_customers"),
            "short",
            8,
            10,
            decimals=0,
        ),
        bars(
            "Revenue by value (month, $currency)",
            "Placed minus refunded amounts of the values' customers in the month." + note,
            by_value("retention_breakdown_revenue"),
            "short",
            8,
            10,
            decimals=2,
        ),
    ]


def cohort_panels() -> list[Builder[Any]]:
    return [
        cohort_matrix(
            "retention_cohort_retention_ratio",
            "Monthly cohorts: share still active k months later",
            "Rows: cohort (month of first activity); columns: months since (offset).",
        ),
        cohort_matrix(
            "retention_cohort_revenue_retention_ratio",
            "Monthly cohorts: revenue k months later, as a share of the first month's",
            "Rows: cohort (month of first activity); columns: months since (offset). Revenue "
            "is placed minus refunded; above 100% a cohort spends more than in its first month.",
        ),
    ]


def cohort_matrix(metric: str, title: str, description: str) -> Builder[Any]:
    """A cohort x offset table of one monthly cohort series."""
    cells = (
        prometheus.Dataquery()
        .expr(sel(metric, 'period="month"'))
        .legend_format("")
        .ref_id("A")
        .datasource(DATASOURCE)
        .instant()
        .format(prometheus_models.PromQueryFormat.TABLE)
    )
    return (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets([cells])
        .unit("percentunit")
        .span(24)
        .height(10)
        .with_transformation(
            models.DataTransformerConfig(
                id_val="groupingToMatrix",
                options={"rowField": "cohort", "columnField": "offset", "valueField": "Value"},
            )
        )
    )


def service_panels() -> list[Builder[Any]]:
    return [
        single(
            "NPS, CSAT and CES (customers' latest scores)",
            "NPS = % promoters (9-10) - % detractors (0-6); CSAT 1-5 and CES 1-7 are means "
            "over each customer's latest score.",
            queries(
                (sel("retention_nps_score"), "NPS"),
                (sel("retention_csat_average"), "CSAT"),
                (sel("retention_ces_average"), "CES"),
            ),
            "short",
            10,
            7,
            decimals=1,
        ),
        series(
            "First response time (median and 90th percentile)",
            "From a ticket's opening to the first agent reply, over all tickets.",
            queries(
                (
                    "histogram_quantile(0.5, sum by (le) "
                    f"({sel('retention_first_response_seconds_bucket')}))",
                    "median",
                ),
                (
                    "histogram_quantile(0.9, sum by (le) "
                    f"({sel('retention_first_response_seconds_bucket')}))",
                    "p90",
                ),
            ),
            "s",
            14,
            7,
        ),
    ]


# --- pipeline health -----------------------------------------------------------------------


def pipeline(limits: Thresholds) -> dashboard.Dashboard:
    board = base(
        "retention-pipeline",
        "Retention pipeline health",
        "Throughput, lag, dead letters, batch latency, watermark delay, Redis errors, stalled "
        "workers, evaluation backlog, the exporter's sources, Redis memory.",
    )
    for variable in target_variables():
        board.with_variable(variable)
    place(
        board,
        [
            ("Throughput", throughput_panels(limits)),
            ("Workers", worker_panels(limits)),
            ("Evaluation and exporter", evaluation_panels(limits)),
            ("HTTP ingest", ingest_panels()),
            ("Redis", redis_panels()),
        ],
    )
    return board


def rate_by(by: str, metric: str, *matchers: str) -> str:
    return f"sum by ({by}) (rate({sel(metric, *matchers)}[{RATE}]))"


def throughput_panels(limits: Thresholds) -> list[Builder[Any]]:
    return [
        series(
            "Events processed per second",
            "Accepted events applied to Redis, cluster-wide.",
            queries((rate_by("topic", "retention_events_processed_total"), "{{topic}}")),
            "ops",
            12,
            8,
        ),
        series(
            "Rejected (dead-letter) and duplicate events per second",
            "Rejections go to the dead-letter topic; duplicates change nothing.",
            queries(
                (
                    rate_by("topic, reason", "retention_events_rejected_total"),
                    "rejected {{topic}} {{reason}}",
                ),
                (rate_by("topic", "retention_events_duplicate_total"), "duplicate {{topic}}"),
            ),
            "ops",
            12,
            8,
        ),
        series(
            "Consumer lag",
            "Broker end offsets minus applied offsets, per topic."
            + rule_note("RetentionConsumerLagGrowing (while the lag also grows)"),
            queries((sel("retention_consumer_lag_messages"), "{{topic}}")),
            "short",
            12,
            8,
            thresholds=steps((None, "green"), (limits.lag_above, "red")),
        ),
        series(
            "Watermark delay and newest event age",
            "Now minus the event-time watermark, and minus the newest event time."
            + rule_note("RetentionNoEventsReceived (newest event age, with no event applied)"),
            queries(
                (sel("retention_watermark_delay_seconds"), "watermark delay"),
                (sel("retention_last_event_age_seconds"), "newest event age"),
            ),
            "s",
            12,
            8,
            thresholds=steps((None, "green"), (limits.no_events_age_above, "red")),
        ),
    ]


def worker_panels(limits: Thresholds) -> list[Builder[Any]]:
    def quantile(q: float) -> str:
        return (
            f"histogram_quantile({q}, sum by (le) "
            f"(rate({sel('retention_batch_duration_seconds_bucket')}[{RATE}])))"
        )

    mean_size = (
        f"sum(rate({sel('retention_batch_size_messages_sum')}[{RATE}])) / "
        f"sum(rate({sel('retention_batch_size_messages_count')}[{RATE}]))"
    )
    return [
        series(
            "Batch latency",
            "Time to apply one batch to Redis, retries included, over all workers.",
            queries((quantile(0.5), "p50"), (quantile(0.99), "p99")),
            "s",
            12,
            8,
        ),
        series(
            "Batch size",
            "Messages per applied batch.",
            queries((mean_size, "mean")),
            "short",
            12,
            8,
        ),
        series(
            "Redis errors per second",
            "Failed Redis calls; each is retried, so errors slow workers but lose nothing.",
            queries((rate_by("instance", "retention_redis_errors_total"), "{{instance}}")),
            "ops",
            12,
            7,
        ),
        single(
            "Workers alive",
            "Workers with a recent heartbeat in Redis. Red where RetentionNoLiveWorker fires.",
            queries((sel("retention_workers_alive"), "workers")),
            "short",
            4,
            7,
            thresholds=steps((None, "red"), (limits.no_live_worker_at + 1, "green")),
        ),
        single(
            "Stalled workers",
            "Live workers whose partitions have lag but that applied nothing for "
            "RETENTION_WORKER_STALLED_AFTER_SECONDS. Red where RetentionWorkerStalled fires.",
            queries((sel("retention_workers_stalled"), "stalled")),
            "short",
            8,
            7,
            thresholds=steps((None, "green"), (limits.stalled_above + 1, "red")),
        ),
        series(
            "Time since each worker's last applied batch",
            "Per worker process; grows while a worker applies nothing (idle, or stalled when "
            "there is lag).",
            queries(
                (
                    f"time() - ({sel('retention_worker_last_batch_timestamp_seconds')} > 0)",
                    "{{instance}}",
                )
            ),
            "s",
            24,
            7,
        ),
    ]


def evaluation_panels(limits: Thresholds) -> list[Builder[Any]]:
    return [
        series(
            "Evaluation backlog",
            "Customers waiting for a lifecycle and risk evaluation: changed since their last "
            "one, or with a recheck due."
            + rule_note("RetentionEvaluationBacklogGrowing (while the backlog also grows)"),
            queries((sel("retention_evaluation_waiting_customers"), "waiting customers")),
            "short",
            8,
            7,
            thresholds=steps((None, "green"), (limits.evaluation_backlog_above, "red")),
        ),
        series(
            "Longest evaluation wait",
            "How long the customer waiting longest for an evaluation has waited."
            + rule_note("RetentionEvaluationBehind"),
            queries((sel("retention_evaluation_wait_seconds"), "longest wait")),
            "s",
            8,
            7,
            thresholds=steps((None, "green"), (limits.evaluation_wait_above, "red")),
        ),
        single(
            "Exporter sources reached",
            "Whether the exporter's latest read reached Redis and the broker; while a source "
            "is unreachable the exporter serves the numbers of its last good read. Red where "
            "RetentionExporterRedisUnreadable and RetentionExporterKafkaUnreadable fire.",
            queries((sel("retention_exporter_source_up"), "{{source}}")),
            "none",
            4,
            7,
            thresholds=steps((None, "red"), (limits.exporter_source_down_at + 1, "green")),
            mappings=up_mapping(),
        ),
        single(
            "Exporter scrape duration",
            "Time the exporter's latest scrape took to read Redis and the broker. A scrape "
            "that outlasts Prometheus' scrape timeout (10 s unless set) fails.",
            queries((sel("retention_exporter_collect_duration_seconds"), "scrape")),
            "s",
            4,
            7,
            thresholds=steps((None, "green"), (5, "yellow"), (10, "red")),
            decimals=3,
        ),
    ]


def ingest_panels() -> list[Builder[Any]]:
    return [
        series(
            "HTTP ingest requests per second",
            "Requests to /v1/events and /v1/batch by response status: 202 taken, 4xx refused "
            "(400 malformed, 401 key, 413 too large, 422 no valid event, 429 rate), 503 "
            "broker unavailable.",
            queries(
                (
                    rate_by("endpoint, status", "retention_ingest_requests_total"),
                    "{{endpoint}} {{status}}",
                )
            ),
            "reqps",
            12,
            8,
        ),
        series(
            "HTTP ingest events per second",
            "Events acknowledged by the broker, by type, and events refused to the client, "
            "by reason.",
            queries(
                (rate_by("type", "retention_ingest_events_accepted_total"), "accepted {{type}}"),
                (
                    rate_by("reason", "retention_ingest_events_rejected_total"),
                    "rejected {{reason}}",
                ),
            ),
            "ops",
            12,
            8,
        ),
    ]


def redis_panels() -> list[Builder[Any]]:
    return [
        series(
            "Redis memory per node",
            "Memory each Redis node uses, and its maxmemory limit (0: none). With "
            "noeviction, a full node stops the workers until memory is freed or added.",
            queries(
                (sel("retention_redis_used_memory_bytes"), "{{node}} used"),
                (sel("retention_redis_maxmemory_bytes"), "{{node}} maxmemory"),
            ),
            "bytes",
            12,
            8,
        ),
        series(
            "Redis memory per tracked customer",
            "Memory of every Redis node (replicas included) over the customers tracked; "
            '"Customer memory" in docs/guarantees.md says what to expect.',
            queries(
                (
                    f"sum({sel('retention_redis_used_memory_bytes')}) / "
                    f"scalar({sel('retention_tracked_customers')})",
                    "bytes per customer",
                )
            ),
            "bytes",
            12,
            8,
        ),
    ]


# --- output ---------------------------------------------------------------------------------


def dashboards(rules: Path = RULES) -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON model, for every dashboard."""
    limits = Thresholds.from_rules(rules)
    found: dict[str, dict[str, Any]] = {}
    for name, board in (
        ("retention-overview.json", overview(limits)),
        ("pipeline-health.json", pipeline(limits)),
    ):
        model: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
        # stable panel ids, in reading order, so that links to a panel survive a rebuild
        for number, panel in enumerate(model["panels"], start=1):
            panel["id"] = number
        found[name] = model
    return found


def render(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def write(out: Path = OUT, rules: Path = RULES) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in dashboards(rules).items():
        path = out / name
        path.write_text(render(model))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="directory to write into")
    args = parser.parse_args(argv)
    try:
        for path in write(args.out):
            print(path)
    except RuleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
