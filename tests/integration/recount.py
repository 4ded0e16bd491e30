"""The evaluation totals recounted from every customer's stored evaluation: what the
totals kept in step (store/evaluations.py, ``evaluation_totals``) must equal."""

from __future__ import annotations

from collections import Counter

from store.evaluations import BAND_LETTERS, EvaluationTotals, evaluation_totals, stored_evaluations
from store.store import Store


async def recounted(store: Store) -> EvaluationTotals:
    evaluations = await stored_evaluations(store, await store.customer_ids())
    lifecycle: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    cltv_at_risk: Counter[str] = Counter()
    bands: Counter[str] = Counter()
    high_value, cltv = 0, 0
    for ev in evaluations.values():
        lifecycle[ev["st"]] += 1
        if ev.get("bd"):
            bands[BAND_LETTERS[ev["bd"]]] += 1
        cltv += int(ev.get("cl") or 0)
        if ev["st"] != "at_risk":
            continue
        for reason in filter(None, ev.get("rr", "").split(",")):
            reasons[reason] += 1
            cltv_at_risk[reason] += int(ev.get("cr") or 0)
        high_value += ev.get("hv") == "1"
    return EvaluationTotals(
        lifecycle=dict(lifecycle),
        at_risk=dict(reasons),
        bands=dict(bands),
        high_value_at_risk=high_value,
        predicted_cltv_micros=cltv,
        cltv_at_risk_micros={r: n for r, n in cltv_at_risk.items() if n},
    )


async def kept_and_recounted(store: Store) -> tuple[EvaluationTotals, EvaluationTotals]:
    """The totals kept, with the zero counts left out, beside the recount."""
    kept = await evaluation_totals(store)
    kept = EvaluationTotals(
        lifecycle={k: n for k, n in kept.lifecycle.items() if n},
        at_risk={k: n for k, n in kept.at_risk.items() if n},
        bands={k: n for k, n in kept.bands.items() if n},
        high_value_at_risk=kept.high_value_at_risk,
        predicted_cltv_micros=kept.predicted_cltv_micros,
        cltv_at_risk_micros={k: n for k, n in kept.cltv_at_risk_micros.items() if n},
    )
    return kept, await recounted(store)
