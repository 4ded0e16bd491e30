"""The web view: pages for people who would rather look than read, served by the HTTP
server beside the API, behind a read key (HTTP basic auth, the key as user name, or a
bearer token).

- ``/``: the current month's numbers, customers and CLTV at risk, revenue and active
  customers per month (SVG), the period table and the cohort heatmap;
- ``/at-risk``: the at-risk list ranked by CLTV at risk, filterable by band and reason,
  each row with its reasons in words;
- ``/customers/{id}``: state, last evaluation with evidence and next steps, orders per
  day (SVG), tickets and scores, the alerts raised about the customer and their outcomes;
- ``/segments/{segment}``: a page of members, the next one, and download links.

Pages are rendered here, with no script and no external file: they work offline. Every
number comes from the same reads as the API (:mod:`retention.queries`).
"""

from __future__ import annotations

import html
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from contract.events import MICROS
from processors import human
from processors.outcomes import outcome
from processors.segments import SEGMENTS, Filters
from retention.api_keys import Scope
from retention.config import Settings
from retention.ingest_rules import RequestError
from retention.queries import cohorts_view, customer_view, periods_view
from retention.report import PERIOD_COLUMNS
from retention.segments import BadCursor, page
from store.evaluations import evaluation_totals, ranked_at_risk
from store.outcomes import alerts_about
from store.periods import Periods
from store.store import Store
from streams.risk_file import load_policy

logger = logging.getLogger(__name__)

Authorize = Callable[[web.Request, Scope], Awaitable[str]]
Handler = Callable[[web.Request], Awaitable[web.Response]]
CHALLENGE = 'Basic realm="retention", charset="UTF-8"'
AT_RISK_ROWS = 50
#: how long a segment page may walk the store looking for its rows
PAGE_SECONDS = 1.0

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
header{background:#1d2433;color:#fff;padding:10px 24px;display:flex;gap:20px;align-items:center}
header a{color:#cfd6e4;text-decoration:none}header a:hover{color:#fff}
header b{margin-right:12px}main{padding:18px 24px;max-width:1200px}
h1{font-size:20px;margin:6px 0 14px}h2{font-size:16px;margin:22px 0 8px}
.kpis{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.kpi{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:10px 12px}
.kpi span{display:block;color:#5b6475;font-size:12px}.kpi b{font-size:20px}
table{border-collapse:collapse;background:#fff;border:1px solid #dde1e8;margin:4px 0}
th,td{padding:5px 9px;border-bottom:1px solid #eceef2;text-align:right;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.l,th.l{text-align:left}
.band-high{color:#b42318;font-weight:600}.band-medium{color:#b54708}.band-low{color:#027a48}
.why{color:#374151;font-size:13px}.step{color:#5b6475;font-size:12px}
form{margin:8px 0}select,button{font:inherit}svg{background:#fff;border:1px solid #dde1e8}
.muted{color:#5b6475}
"""


#: Where the alerts' runbook, served at /runbook, is looked for: beside the package in a
#: checkout, then where the image puts it.
RUNBOOK_PLACES = (
    Path(__file__).resolve().parent.parent / "prometheus" / "runbook.md",
    Path("/usr/share/retention/runbook.md"),
)


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def layout(title: str, body: str, currency: str) -> str:
    nav = '<a href="/">Overview</a><a href="/at-risk">At risk</a>' + "".join(
        f'<a href="/segments/{s}">{s.replace("_", " ")}</a>' for s in SEGMENTS
    )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f'<link rel=icon href="data:,"><title>{esc(title)} - retention</title>'
        f"<style>{STYLE}</style></head><body>"
        f"<header><b>retention</b>{nav}<span class=muted>money in {esc(currency)}</span>"
        f"</header><main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """An HTML table; cells are HTML already (escaped by the caller)."""

    def cls(i: int) -> str:
        return " class=l" if i < left else ""

    head = "".join(f"<th{cls(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bars(
    points: Sequence[tuple[str, float]], title: str, width: int = 640, height: int = 180
) -> str:
    """A bar chart as inline SVG: one labelled bar per point."""
    if not points:
        return "<p class=muted>nothing yet</p>"
    top = max(v for _, v in points) or 1.0
    step = (width - 40) / len(points)
    parts = [
        f'<svg role=img aria-label="{esc(title)}" width={width} height={height} '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x=8 y=16 font-size=12 fill="#5b6475">{esc(title)}</text>',
    ]
    for i, (label, value) in enumerate(points):
        h = (height - 50) * value / top
        x = 30 + i * step
        parts.append(
            f'<rect x="{x:.1f}" y="{height - 25 - h:.1f}" width="{max(step * 0.7, 1):.1f}" '
            f'height="{h:.1f}" fill="#3b6fd8"><title>{esc(label)}: {value:,.2f}</title></rect>'
        )
        if len(points) <= 24 or i % max(1, len(points) // 12) == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{height - 8}" font-size=10 fill="#5b6475">'
                f"{esc(label[-5:] if len(points) > 12 else label)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def heat(share: float | None) -> str:
    if share is None:
        return ""
    alpha = 0.1 + 0.8 * max(0.0, min(1.0, share))
    ink = "#fff" if share > 0.5 else "#1d2433"
    return f' style="background:rgba(59,111,216,{alpha:.2f});color:{ink}"'


def _when(iso_time: str | None) -> str:
    """An ISO time to the minute, UTC."""
    return "-" if not iso_time else iso_time[:16].replace("T", " ")


def band_cell(band: str | None) -> str:
    return f'<span class="band-{esc(band)}">{esc(band or "-")}</span>'


class WebView:
    """The pages; ``authorize`` checks the key (the HTTP server's)."""

    def __init__(self, settings: Settings, store: Store, authorize: Authorize) -> None:
        self.settings = settings
        self.store = store
        self.periods = Periods(store.redis, settings.key_prefix)
        self.authorize = authorize
        self.currency = settings.reporting_currency

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.guarded(self.overview))
        app.router.add_get("/at-risk", self.guarded(self.at_risk))
        app.router.add_get("/customers/{id}", self.guarded(self.customer))
        app.router.add_get("/segments/{segment}", self.guarded(self.segment))
        # the alerts' runbook, open to anyone who can reach the server: it holds no data
        app.router.add_get("/runbook", self.runbook)

    def guarded(self, handler: Handler) -> Handler:
        async def handle(request: web.Request) -> web.Response:
            try:
                await self.authorize(request, "read")
                return await handler(request)
            except RequestError as exc:
                headers = dict(exc.headers)
                if exc.status == 401:
                    headers["WWW-Authenticate"] = CHALLENGE
                body = layout(f"{exc.status}", f"<p>{esc(exc.detail)}</p>", self.currency)
                return web.Response(
                    status=exc.status, text=body, content_type="text/html", headers=headers
                )
            except Exception:
                logger.exception("page failed", extra={"path": request.path})
                body = layout("error", "<p>see the server log</p>", self.currency)
                return web.Response(status=500, text=body, content_type="text/html")

        return handle

    async def runbook(self, request: web.Request) -> web.Response:
        for place in RUNBOOK_PLACES:
            if place.is_file():
                return self.page("runbook", runbook_html(place.read_text()))
        return self.page("runbook", "<p>the runbook is not installed with this server</p>")

    def page(self, title: str, body: str) -> web.Response:
        return web.Response(text=layout(title, body, self.currency), content_type="text/html")

    async def overview(self, request: web.Request) -> web.Response:
        churn = self.settings.churn_after_days
        rows, active = await periods_view(self.periods, "month", churn)
        totals = await evaluation_totals(self.store)
        current = rows[-1] if rows else {}
        at_risk = totals.lifecycle.get("at_risk", 0)
        exposed = sum(totals.cltv_at_risk_micros.values()) / MICROS
        kpis = [
            ("active today", str(active.get("day", 0))),
            ("active this week", str(active.get("week", 0))),
            ("active this month", str(active.get("month", 0))),
            ("CRR this month", human.percent(current.get("crr"))),
            ("churn this month", human.percent(current.get("churn_rate"))),
            ("revenue this month", human.money(current.get("revenue"), self.currency)),
            ("AOV this month", human.money(current.get("aov"), self.currency)),
            ("repeat rate", human.percent(current.get("repeat_customer_rate"))),
            ("customers at risk", str(at_risk)),
            ("CLTV at risk", human.money(exposed, self.currency)),
        ]
        body = ["<div class=kpis id=kpis>"]
        body += [
            f'<div class=kpi data-name="{esc(n)}"><span>{esc(n)}</span><b>{esc(v)}</b></div>'
            for n, v in kpis
        ]
        body.append("</div><h2>Revenue and customers per month</h2>")
        body.append(bars([(r["period"][:7], r["revenue"]) for r in rows[-24:]], "revenue"))
        body.append(
            bars(
                [(r["period"][:7], float(r["end_customers"])) for r in rows[-24:]],
                "active customers at the end of each month",
            )
        )
        body.append("<h2>Months</h2>")
        body.append(
            table(
                ["month", *(header for _, header, _ in PERIOD_COLUMNS)],
                [
                    [
                        esc(r["period"][:7] + (" (open)" if r.get("open") else "")),
                        *(esc(fmt(r.get(key))) for key, _, fmt in PERIOD_COLUMNS),
                    ]
                    for r in reversed(rows[-24:])
                ],
            )
        )
        cohorts = await cohorts_view(self.periods, "month")
        width = max((len(c["active"]) for c in cohorts.values()), default=0)
        body.append("<h2>Monthly cohorts: share still active k months later</h2>")
        body.append(
            table(
                ["cohort", "size", *(str(k) for k in range(width))],
                [
                    [esc(start[:7]), esc(c["size"])]
                    + [
                        f"<span{heat(n / c['size'] if c['size'] else None)}>"
                        f"{esc(human.percent(n / c['size'] if c['size'] else None))}</span>"
                        for n in c["active"]
                    ]
                    for start, c in sorted(cohorts.items())[-24:]
                ],
            )
        )
        body.append(
            "<h2>Monthly cohorts: revenue k months later, as a share of the first month's</h2>"
        )
        body.append(
            table(
                ["cohort", "first month", *(str(k) for k in range(width))],
                [
                    [esc(start[:7]), esc(human.money(c["revenue"][0], self.currency))]
                    + [
                        f"<span{heat(share)}>{esc(human.percent(share))}</span>"
                        for share in c["revenue_share"]
                    ]
                    for start, c in sorted(cohorts.items())[-24:]
                ],
            )
        )
        return self.page("Overview", "".join(body))

    async def at_risk(self, request: web.Request) -> web.Response:
        band = request.query.get("band", "")
        reason = request.query.get("reason", "")
        rows = cast(list[dict[str, Any]], await ranked_at_risk(self.store, 1000))
        kept = [
            r
            for r in rows
            if (not band or r["band"] == band) and (not reason or reason in r["risk_reasons"])
        ][:AT_RISK_ROWS]
        reasons = sorted({x for r in rows for x in r["risk_reasons"]})
        options = "".join(
            f'<option value="{esc(x)}"{" selected" if x == reason else ""}>{esc(x)}</option>'
            for x in reasons
        )
        bands = "".join(
            f'<option value="{b}"{" selected" if b == band else ""}>{b}</option>'
            for b in ("high", "medium", "low")
        )
        form = (
            '<form method=get action="/at-risk">band <select name=band><option value="">all'
            f'</option>{bands}</select> reason <select name=reason><option value="">all'
            f"</option>{options}</select> <button>show</button></form>"
        )
        lines = []
        for r in kept:
            view = await customer_view(self.store, self.settings, str(r["customer_id"]))
            words = "".join(
                f"<div class=why>{esc(e['text'])}</div><div class=step>{esc(e['next_step'])}</div>"
                for e in (view or {}).get("evidence", [])
            )
            cid = str(r["customer_id"])
            lines.append(
                [
                    f'<a href="/customers/{urllib.parse.quote(cid, safe="")}">{esc(cid)}</a>',
                    band_cell(r["band"]),
                    esc(human.percent(r["risk_score"])),
                    esc(human.money(r["cltv"])),
                    esc(human.money(r["cltv_at_risk"])),
                    esc(human.money(r["revenue"])),
                    f"<div class=l>{words or esc(', '.join(r['risk_reasons']))}</div>",
                ]
            )
        body = form + (
            table(
                ["customer", "band", "risk", "CLTV", "CLTV at risk", "revenue", "why"],
                lines,
            )
            if lines
            else "<p>no customer at risk</p>"
        )
        return self.page("At risk, by CLTV at risk", body)

    async def customer(self, request: web.Request) -> web.Response:
        cid = request.match_info["id"]
        view = await customer_view(self.store, self.settings, cid)
        if view is None:
            raise RequestError(404, "not_found", "no such customer")
        cur = self.currency
        facts = [
            ("status", esc(view["status"])),
            ("band", band_cell(view["band"])),
            ("risk", esc(human.percent(view["risk_score"]))),
            ("CLTV", esc(human.money(view["cltv"], cur))),
            ("CLTV at risk", esc(human.money(view["cltv_at_risk"], cur))),
            ("evaluated at", esc(_when(view["evaluated_at"]))),
            ("orders", esc(view["orders"])),
            ("revenue", esc(human.money(view["revenue"], cur))),
            ("AOV", esc(human.money(view["aov"], cur))),
            ("last order", esc(_when(view["last_order_at"]))),
            ("last activity", esc(_when(view["last_activity_at"]))),
            ("P(alive)", esc(human.percent(view["p_alive"]))),
            ("open tickets", esc(view["open_tickets"])),
            *(
                (
                    name,
                    esc(
                        kept["latest"]
                        if kept["first"] == kept["latest"]
                        else f"{kept['latest']} (first {kept['first']})"
                    ),
                )
                for name, kept in view["attributes"].items()
            ),
            ("first response", esc(human.duration(view["first_response_seconds_avg"]))),
            (
                "NPS / CSAT / CES",
                esc(
                    " / ".join(
                        str(view[s] if view[s] is not None else "-") for s in ("nps", "csat", "ces")
                    )
                ),
            ),
        ]
        body = [
            "<div class=kpis id=facts>",
            *(
                f'<div class=kpi data-name="{esc(n)}"><span>{esc(n)}</span><b>{v}</b></div>'
                for n, v in facts
            ),
            "</div><h2>Why</h2>",
        ]
        evidence = view.get("evidence") or []
        body.append(
            "".join(
                f"<p><b>{esc(e['reason'])}</b>: {esc(e['text'])}<br>"
                f"<span class=step>Next step: {esc(e['next_step'])}</span></p>"
                for e in evidence
            )
            or "<p class=muted>no risk reason holds</p>"
        )
        body.append("<h2>Orders per day</h2>")
        days = sorted(view["orders_by_day"].items())
        body.append(bars([(d, float(n)) for d, n in days[-60:]], "orders per day"))
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        raised = await alerts_about(self.store, cid)
        state = await self.store.read_customer(cid)
        window = load_policy(self.settings.risk_file).outcome_window_days
        body.append("<h2>Alerts about this customer</h2>")
        body.append(
            table(
                ["raised", "kind", "band", "outcome"],
                [
                    [
                        esc(datetime.fromtimestamp(r.at_ms / 1000, UTC).isoformat()[:16]),
                        esc(r.kind),
                        band_cell(r.band or None),
                        esc(outcome(r, state, window, now_ms)),
                    ]
                    for r in sorted(raised, key=lambda r: -r.at_ms)
                ],
            )
            if raised
            else "<p class=muted>none raised</p>"
        )
        return self.page(f"Customer {cid}", "".join(body))

    async def segment(self, request: web.Request) -> web.Response:
        segment = request.match_info["segment"]
        if segment not in SEGMENTS:
            raise RequestError(404, "not_found", "no such segment")
        cursor = request.query.get("cursor")
        # a person wants rows, not an empty page of a sparse segment: walk on for up to
        # PAGE_SECONDS until a page's worth is found or the walk is over
        rows_found: list[dict[str, Any]] = []
        deadline = time.monotonic() + PAGE_SECONDS
        try:
            while True:
                found = await page(self.store, segment, Filters(), self.currency, cursor, 200)
                rows_found += found.rows
                cursor = found.cursor
                if cursor is None or len(rows_found) >= 200 or time.monotonic() > deadline:
                    break
        except BadCursor as exc:
            raise RequestError(400, "malformed", str(exc)) from None
        links = (
            f'<p>Download every member: <a href="/v1/export?segment={segment}&format=csv">CSV</a>'
            f' · <a href="/v1/export?segment={segment}&format=jsonl">JSON lines</a></p>'
        )
        rows = [
            [
                f'<a href="/customers/{urllib.parse.quote(r["customer_id"], safe="")}">'
                f"{esc(r['customer_id'])}</a>",
                band_cell(r["band"]),
                esc(human.percent(r["risk_score"])),
                esc(human.money(r["cltv"])),
                esc(r["orders"]),
                esc(human.money(r["revenue"])),
                esc((r["last_activity_at"] or "-")[:10]),
            ]
            for r in rows_found
        ]
        more = (
            f'<p><a id=next href="/segments/{segment}?cursor={urllib.parse.quote(cursor)}">'
            "next page</a></p>"
            if cursor
            else ""
        )
        body = (
            links
            + table(["customer", "band", "risk", "CLTV", "orders", "revenue", "last active"], rows)
            + more
        )
        return self.page(f"Segment: {segment.replace('_', ' ')}", body)


def anchor(heading: str) -> str:
    """A heading's anchor as GitHub names it: lower case, spaces to dashes, punctuation
    dropped (the alert rules link to ``<runbook>#<alert name in lower case>``)."""
    kept = "".join(c for c in heading.strip().lower() if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def runbook_html(text: str) -> str:
    """The runbook's Markdown as plain HTML: headings with their anchors, code spans,
    lists and paragraphs; everything escaped."""

    def inline(line: str) -> str:
        parts = esc(line).split("`")
        return "".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts))

    out: list[str] = []
    listing = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("- ") and not listing:
            out.append("<ul>")
            listing = True
        elif listing and not stripped.startswith("- ") and not line.startswith("  "):
            out.append("</ul>")
            listing = False
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 4)
            title = line.lstrip("#").strip()
            out.append(f'<h{level} id="{esc(anchor(title))}">{inline(title)}</h{level}>')
        elif stripped.startswith("- "):
            out.append(f"<li>{inline(stripped[2:])}</li>")
        elif stripped:
            out.append(f"<p>{inline(stripped)}</p>")
    if listing:
        out.append("</ul>")
    return "\n".join(out)


def customer_url(base: str, customer_id: str) -> str:
    """The customer's page under the configured base URL (alerts link to it)."""
    return base.rstrip("/") + "/customers/" + urllib.parse.quote(customer_id, safe="")
