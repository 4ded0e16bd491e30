"""Every Redis key the project uses, in one place: how a key is named, and what it holds.

A key is the configured prefix ``P`` followed by its parts joined with ``:`` (``P c:42``
for customer 42); :class:`Keys` builds them, and every module of the Redis edge asks it.
The Lua scripts receive ``P`` as an argument and join their keys the same way. Several
deployments (or test runs) share one Redis by using different prefixes.

Customers are spread over the store's shards (:mod:`store.shards`). Every family marked
``S`` below lives once per shard, under the shard's prefix ``S``: ``P`` itself for a store
of one shard on a single Redis, else ``P{<tag>}:`` (``rt:{3.0}:c:42``), the hash tag
keeping a shard's keys in one Redis Cluster slot. Totals over customers kept per shard are
summed by their readers. Families marked ``P`` exist once, under the prefix.

- ``P shards``             the store's shard count, recorded when it is set up
- ``P format``             the format the store is written in (:mod:`store.shards`,
                            ``STORE_FORMAT``): a version that writes another refuses the
                            store, and ``retention rebuild`` rewrites it in its own

The customer store (written by the batch script, ``batch_*.lua``, read by :mod:`store.store`):

- ``S c:<customer>``       hash: ``s1``, ``s2``, ..., the customer's counters and times
                            packed with MessagePack and cut in pieces (a map of field →
                            number; field names in :mod:`store.store`; the first event seen
                            ``fs``, latest order ``lo`` and latest login ``ll`` only while
                            they differ from the first and latest activity ``fa``, ``la``;
                            money in the reporting currency, ``pm`` placed and ``rm``
                            refunded, and per original currency in ``pm:<CUR>`` and
                            ``rm:<CUR>``, each in two parts (:func:`money_micros`: the
                            high parts are ``ph``, ``rh``, ``ph:<CUR>``, ``rh:<CUR>``,
                            absent while 0); placed
                            orders per day under ``d``, day number since the epoch →
                            orders), which ``read_customers.lua`` unpacks into a field
                            each, as text; beside them ``ix``, the customer's number; ``q``
                            and ``r``, which belong to the evaluation queues (below); and
                            ``ev``, ``ev2``, ..., the customer's last evaluation in pieces
                            (``st|sc|rr|hv|at|no|cl|cr``: status, risk score, reasons, high
                            value, when, orders, predicted CLTV and CLTV at risk in
                            micros). Every value is at most 64 bytes, which keeps the hash
                            a compact listpack under Redis's default
                            ``hash-max-listpack-value``. Hashes of earlier versions hold
                            every field of the state as a field of their own, the days
                            named by their number (the only field names made of digits):
                            they are read as such, and packed at the customer's next change
- ``S od:<customer>``      hash, placed orders per day, where earlier versions kept them
                            (day number → count); readers add it to the customer hash's,
                            and the customer's next placed order moves it there
- ``S tk:<customer>``      hash, ticket state (``<ticket>|o|r|s|t``: opened, first reply,
                            open flag, status time), at most MAX_TICKETS tickets; the
                            customer hash counts them in ``tn``
- ``S ids:next``          the shard's next dense customer number (the number is the
                            customer hash's ``ix``), for the per-period bitmaps; earlier
                            versions also kept ``S ids`` (customer → number), unread
- ``S dg:<k>:<n>``         dedupe digests (event type, customer, event id), spread over
                            2^k small hashes: ``n`` the top k bits of the digest's first
                            five characters; field the digest, value the bucket of time it
                            arrived in (the horizon is a number of buckets); up to about 64
                            a hash, so that they stay listpacks
- ``S dg``                 the digests' marker, hash: ``k``; ``old``, the previous k while
                            its digests are moved to the new hashes; per layout L: ``nL``
                            digests kept, ``cL`` the next hash to sweep, ``sL`` the oldest
                            bucket of the horizon when the sweep's round began, ``fL`` a
                            bucket no digest kept is older than; ``t`` the time of the
                            last batch (the sweep goes a round per bucket width of time,
                            or per eighth of the digests kept that arrive, if faster)
- ``S dd:<bucket>:<n>``, ``S dd:<bucket>``, ``S dd:buckets``  digests of earlier versions,
                            a bucket's in hashes of their own (fields without the first
                            k // 6 characters) with a marker (``k``, ``n``, ``next``) and a
                            set of the buckets; read until they leave the horizon, then
                            deleted
- ``S seen:<bucket>``      sets of digests written by still earlier versions, read until
                            they expire
- ``S offsets:<cluster>``  hash ``topic|partition`` → the last offset the shard has taken
                            account of (every shard sees every batch's offsets), written
                            in the same script as the state; the lowest over the shards
                            is the truth a worker seeks to
- ``S stamps:<cluster>``   hash ``topic|partition`` → Kafka timestamp (ms) of that message,
                            to recognise a topic deleted and created again
- ``S act:<p>:<day>``       bitmap of customers active in a period (p = d|w|m, day = the
                            period's first day, counted from 1970-01-01)
- ``S act:n``               hash, day → customers active that day (the bits of
                            ``act:d:<day>``), raised with each bit set; the period readers
                            learn from it which days changed
- ``S win:<from>:<to>``     bitmap, union of the day bitmaps of days [from, to) (customers
                            active in a churn window), kept for repeated readers (the
                            exporter's period rows, the evaluator's lookback) and expiring
                            an hour after its last use (``window_union.lua``);
                            ``S win:<from>:<to>:n`` holds the ``act:n`` counts it includes
- ``S coh:<p>:<day>``       bitmap of customers whose first activity lies in that period;
                            bit i stands for the customer numbered start + i, the start
                            being the number of the first customer put in it (rounded down
                            to a byte), so that a period's newcomers take no room for the
                            customers numbered before them
- ``S coh:base``            hash ``<p>:<day>`` → a cohort bitmap's start (bits); none means
                            0, as for the bitmaps of earlier versions
- ``S sales:<p>:<day>``     hash: placed orders ``o``, placed ``pm``/``ph`` and refunded
                            ``rm``/``rh`` micros (two parts each, :func:`money_micros`),
                            buyers ``b`` and repeat buyers ``r`` (customers whose placed
                            orders in the period reached one, and two)
- ``S buy:<p>:<day>``, ``S rep:<p>:<day>`` bitmaps of buyers and of repeat buyers, where
                            earlier versions marked them; readers add their counts to
                            ``b`` and ``r`` (a customer is counted in one or the other)
- ``S meta``               hash: ``first`` and ``last`` event time (ms)
- ``S newest:<cluster>``   hash ``topic|partition`` → newest event time applied (ms)
- ``S stats``              hash of counters: ``accepted|topic``, ``duplicate|topic``,
                            ``rejected|topic|reason``
- ``S surveys``            hash of survey totals over customers' latest scores:
                            ``<survey>|sum``, ``<survey>|n``, ``nps|promoters``,
                            ``nps|detractors``
- ``S responses``          hash, first-response histogram buckets of all tickets
- ``P workers``            hash worker id → JSON heartbeat
- ``S rebuilding``         set while ``retention rebuild`` wipes the store (when it began,
                            ms), removed only once the wipe has finished: the batch and
                            evaluation scripts refuse to write while it exists, and the
                            leader's closing and refit wait
- ``P replay``             hash ``topic|partition`` → the offset the store must reach
                            again before evaluations resume: the topics' end offsets when
                            a rebuild began, or what a worker had applied when it found
                            the store behind it (rollback, restore); dropped once reached
- ``S corrupt``            hash, customer → when (ms) it was set aside because its stored
                            state could not be read (``batch_apply.lua``)
- ``S corrupt:<customer>`` set of its events held back meanwhile
                            (``topic|partition|offset``), applied by
                            ``retention restore-customer``
- ``S tmp:<name>``         scratch bitmaps of the period and cohort scripts, deleted by
                            the script that made them

Periods (:mod:`store.periods`):

- ``P rows:<p>:<W>``       hash, closed period rows that earlier versions wrote once;
                            no longer written nor read (rows are counted when read)
- ``P packed``             hash, per period letter: the first day of the next ended
                            period whose bitmaps are to be rewritten at their exact size
                            (``Periods.compact``); those before it have been

Evaluations and models (:mod:`store.evaluations`, :mod:`store.models`):

- ``S dueq``               list of changed customers waiting for an evaluation, in the
                            order of their first change since their last one; the customer
                            hash's ``q`` (that change's batch time, ms) marks a customer
                            waiting, so it is queued once until taken
- ``S sched:<n>``          the scheduled rechecks, customer → when to evaluate next (ms,
                            evaluation clock), in sorted sets of at most 128 entries (so
                            that each stays a compact listpack), each entry at or after its
                            chunk's bound; customers being evaluated sit there at their
                            lease's end. The customer hash's ``r`` holds the customer's
                            recheck time (``sched_chunks.lua``)
- ``S sched:at``           sorted set, chunk ``n`` → its bound (ms): the chunks in time order
- ``S sched:next``         the last chunk number given
- ``S due``, ``S sched``   sorted sets of both queues as earlier versions kept them (≈ 107
                            B a customer), read by the evaluator until empty
- ``S ev:<customer>``      hash, the customer's last evaluation as earlier versions kept it
                            (read until the customer is evaluated again)
- ``S atrisk``             sorted set of at-risk customers, ranked
- ``S life:counts``, ``S risk:reasons``, ``S cltv:at_risk`` hashes, and ``S
  risk:high_value``, ``S cltv:total`` counters, kept in step with the evaluations
- ``S fitgrid``            hash ``first:last:days`` → buyers in that cell: first and last
                            order day (day numbers), distinct order days; written by the
                            batch script when a placed order adds a distinct day, summed
                            over shards by a refit (:mod:`processors.fit_grid`)
- ``P hv:cltv``            the high-value CLTV threshold in use
- ``P bgnbd``, ``P bgnbd:at`` the fitted models (JSON, with what the refit read and how
                            long it took) and when they were fitted

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

#: Money sums are kept in two integers (batch_state.lua, Money), each below 2^53 where the
#: script's doubles are exact: the micros below MEGA, and the count of whole MEGAs.
MEGA = 10**12


def money_micros(low: int | str | None, high: int | str | None) -> int:
    """A money sum in micros from its two stored parts (absent parts are 0)."""
    return int(low or 0) + int(high or 0) * MEGA


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix; the prefix is used as given (it usually ends in ``:``)."""

    prefix: str

    def key(self, *parts: str) -> str:
        """A ``P`` family's key; ``S`` families are named under a shard's prefix."""
        return self.prefix + ":".join(parts)
