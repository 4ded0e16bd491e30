"""Every Redis key the project uses, in one place: how a key is named, and what it holds.

A key is the configured prefix ``P`` followed by its parts joined with ``:`` (``P c:42``
for customer 42); :class:`Keys` builds them, and every module of the Redis edge asks it.
The Lua scripts receive ``P`` as an argument and join their keys the same way. Several
deployments (or test runs) share one Redis by using different prefixes.

The customer store (written by ``apply_batch.lua``, read by :mod:`store.store`):

- ``P c:<customer>``       hash, the customer's counters and times (field names in
                            :mod:`store.store`); money in the reporting currency, and per
                            original currency in ``pm:<CUR>`` (placed) and ``rm:<CUR>``
                            (refunded)
- ``P od:<customer>``      hash, placed orders per day (day number since the epoch → count)
- ``P tk:<customer>``      hash, ticket state (``<ticket>|o|r|s|t``: opened, first reply,
                            open flag, status time), at most MAX_TICKETS tickets; the
                            customer hash counts them in ``tn``
- ``P ids``, ``P ids:next`` dense customer numbers, for per-period bitmaps
- ``P seen:<bucket>``      sets of dedupe digests (event type, customer, event id), each
                            set expiring after the dedupe horizon
- ``P offsets:<cluster>``  hash ``topic|partition`` → last applied offset, written in the
                            same script as the state: the truth a worker seeks to
- ``P stamps:<cluster>``   hash ``topic|partition`` → Kafka timestamp (ms) of that message,
                            to recognise a topic deleted and created again
- ``P act:<p>:<day>``       bitmap of customers active in a period (p = d|w|m, day = the
                            period's first day, counted from 1970-01-01)
- ``P coh:<p>:<day>``       bitmap of customers whose first activity lies in that period
- ``P sales:<p>:<day>``     hash: placed orders ``o``, placed ``pm`` and refunded ``rm`` micros
- ``P buy:<p>:<day>``, ``P rep:<p>:<day>`` bitmaps of buyers and of repeat buyers
- ``P meta``               hash: ``first`` and ``last`` event time (ms)
- ``P newest:<cluster>``   hash ``topic|partition`` → newest event time applied (ms)
- ``P stats``              hash of counters: ``accepted|topic``, ``duplicate|topic``,
                            ``rejected|topic|reason``
- ``P surveys``            hash of survey totals over customers' latest scores:
                            ``<survey>|sum``, ``<survey>|n``, ``nps|promoters``,
                            ``nps|detractors``
- ``P responses``          hash, first-response histogram buckets of all tickets
- ``P workers``            hash worker id → JSON heartbeat
- ``P rebuilding``         set while ``retention rebuild`` wipes the store; the batch
                            script refuses to write while it exists
- ``P tmp:<name>``         scratch bitmaps of the period and cohort scripts, deleted by
                            the script that made them

Periods (:mod:`store.periods`):

- ``P rows:<p>:<W>``       hash, closed period rows for churn window ``W`` days (the
                            period's first date → JSON row), each written once

Evaluations and models (:mod:`store.evaluations`, :mod:`store.models`):

- ``P due``                sorted set, customer → when to evaluate next (ms; 0 = now)
- ``P ev:<customer>``      hash, the customer's last evaluation
- ``P atrisk``             sorted set of at-risk customers, ranked
- ``P life:counts``, ``P risk:reasons``, ``P cltv:at_risk`` hashes, and ``P
  risk:high_value``, ``P cltv:total`` counters, kept in step with the evaluations
- ``P hv:cltv``            the high-value CLTV threshold in use
- ``P bgnbd``, ``P bgnbd:at`` the fitted BG/NBD parameters (JSON) and when they were fitted

Notifications (:mod:`store.deliveries`; a rebuild keeps the ``notify:`` family, since what
was delivered is not derived from the events):

- ``P notify:delivered:<subscriber>``  sorted set, alert key → delivery time (ms); an alert
                            found there is a duplicate (a redelivery after a restart, or the
                            tracker raising it twice); entries older than the dedupe
                            horizon are dropped
- ``P notify:last:<subscriber>:<kind>:<customer>``  the ``at`` (ms) of the last alert of
                            that kind delivered for that customer; it expires with the
                            cool-down
- ``P notify:dead``        list of JSON dead letters ``{reason, subscriber, alert, error,
                            attempts, at}``, oldest first, trimmed to the newest
                            ``dead_letter_limit`` entries
- ``P notify:stats``       hash of counters ``sent|<channel>``, ``failed|<channel>``,
                            ``suppressed|<channel>``, ``duplicate|<channel>``; ``bad``
                            (undecodable alerts), ``internal_error`` (unexpected exceptions)
                            and ``dead_trimmed`` (dead letters dropped by the limit)

HTTP ingest (:mod:`store.ingest_state`):

- ``P keys``               hash, write key name → ``{"sha256": hex digest, "created_at":
                            unix seconds}``; the keys themselves are stored nowhere
- ``P ingest:stats``       hash of counters ``request|<endpoint>|<status>``,
                            ``accepted|<type>``, ``rejected|<reason>``
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix; the prefix is used as given (it usually ends in ``:``)."""

    prefix: str

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)
