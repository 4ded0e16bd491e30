"""The committed Grafana dashboards are what grafana/build.py writes, and its thresholds
come from the alert rules."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_build", ROOT / "grafana" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


build = load_build()


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def test_committed_dashboards_match_the_generator(tmp_path: Path) -> None:
    written = build.write(tmp_path)
    assert {p.name for p in written} == {
        p.name for p in (ROOT / "grafana" / "dashboards").glob("*.json")
    }
    for path in written:
        committed = (ROOT / "grafana" / "dashboards" / path.name).read_text()
        assert committed == path.read_text(), f"{path.name} drifted: run `make dashboards`"


def test_every_panel_and_target_reads_the_datasource_variable() -> None:
    for name, board in build.dashboards().items():
        names = [v["name"] for v in board["templating"]["list"]]
        assert names[:3] == ["datasource", "job", "instance"], name
        for panel in panels(board):
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
                assert 'job=~"$job", instance=~"$instance"' in target["expr"], panel["title"]


def test_period_panels_follow_the_period_variable() -> None:
    board = build.dashboards()["retention-overview.json"]
    for panel in panels(board):
        for target in panel["targets"]:
            if "{{period}}" in target["legendFormat"]:
                assert 'period=~"$period"' in target["expr"], panel["title"]


def test_money_panels_name_the_currency() -> None:
    board = build.dashboards()["retention-overview.json"]
    money = [p for p in panels(board) if "$currency" in p["title"]]
    assert {p["title"].split(" (")[0] for p in money} == {
        "Revenue",
        "Revenue by value",
        "Average order value",
        "Predicted CLTV",
        "CLTV at risk by reason",
    }
    assert all(p["fieldConfig"]["defaults"]["decimals"] == 2 for p in money)


def by_title(title: str) -> dict[str, Any]:
    for board in build.dashboards().values():
        for panel in panels(board):
            if panel["title"] == title:
                return panel
    raise AssertionError(title)


def steps_of(title: str) -> list[tuple[float | None, str]]:
    steps = by_title(title)["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [(s["value"], s["color"]) for s in steps]


@pytest.mark.parametrize(
    ("title", "steps"),
    [
        # RetentionCRRBelowTarget: CRR < 0.85
        ("Customer retention rate (CRR), target 85%", [(None, "red"), (0.85, "green")]),
        # RetentionConsumerLagGrowing: lag > 1000
        ("Consumer lag", [(None, "green"), (1000, "red")]),
        # RetentionNoEventsReceived: newest event age > 3600
        ("Watermark delay and newest event age", [(None, "green"), (3600, "red")]),
        # RetentionEvaluationBacklogGrowing and RetentionEvaluationBehind
        ("Evaluation backlog", [(None, "green"), (1000, "red")]),
        ("Longest evaluation wait", [(None, "green"), (1800, "red")]),
        # counts: RetentionWorkerStalled > 0, RetentionNoLiveWorker == 0
        ("Stalled workers", [(None, "green"), (1, "red")]),
        ("Workers alive", [(None, "red"), (1, "green")]),
        # 0/1 flags apart from the scrape seconds: a healthy source is green
        ("Exporter sources reached", [(None, "red"), (1, "green")]),
        ("Exporter scrape duration", [(None, "green"), (5, "yellow"), (10, "red")]),
    ],
)
def test_thresholds_are_the_alert_rules_numbers(
    title: str, steps: list[tuple[float | None, str]]
) -> None:
    assert steps_of(title) == steps


def test_threshold_lines_are_drawn_on_graphs() -> None:
    panel = by_title("Consumer lag")
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] == "dashed"


RULES = """
groups:
  - name: g
    rules:
      - alert: RetentionConsumerLagGrowing
        expr: |
          retention_consumer_lag_messages{topic!=""} > 2.5e3
          and
          deriv(retention_consumer_lag_messages[10m]) > 0
      - alert: RetentionWorkerStalled
        expr: max(retention_workers_stalled) > 0
      - alert: RetentionMemory
        expr: retention_redis_used_memory_bytes > 3 * 1024
"""


@pytest.mark.parametrize(
    ("alert", "series", "op", "expected"),
    [
        # matchers on the series, an exponent in the number
        ("RetentionConsumerLagGrowing", "retention_consumer_lag_messages", ">", 2500.0),
        # the series inside an aggregation
        ("RetentionWorkerStalled", "retention_workers_stalled", ">", 0.0),
    ],
)
def test_alert_threshold_reads_the_number(
    tmp_path: Path, alert: str, series: str, op: str, expected: float
) -> None:
    (tmp_path / "r.yml").write_text(RULES)
    assert (
        build.alert_threshold(build.alert_exprs(tmp_path / "r.yml"), alert, series, op) == expected
    )


@pytest.mark.parametrize(
    ("alert", "series", "op", "message"),
    [
        # the alert was removed or renamed
        ("RetentionGone", "retention_workers_stalled", ">", "has no alert RetentionGone"),
        # the comparison changed direction
        ("RetentionWorkerStalled", "retention_workers_stalled", "<", "no longer compares"),
        # a computed number is not a threshold the generator can draw
        ("RetentionMemory", "retention_redis_used_memory_bytes", ">", "no longer compares"),
    ],
)
def test_alert_threshold_fails_loudly(
    tmp_path: Path, alert: str, series: str, op: str, message: str
) -> None:
    (tmp_path / "r.yml").write_text(RULES)
    with pytest.raises(build.RuleError, match=message):
        build.alert_threshold(build.alert_exprs(tmp_path / "r.yml"), alert, series, op)


def test_a_missing_alert_stops_the_build(tmp_path: Path) -> None:
    (tmp_path / "r.yml").write_text(RULES)
    with pytest.raises(build.RuleError, match="RetentionCRRBelowTarget"):
        build.dashboards(tmp_path / "r.yml")


def test_written_json_is_valid_and_sorted(tmp_path: Path) -> None:
    for path in build.write(tmp_path):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
