"""The record the worker hands the batch script for each message: sixteen strings, in the
order of :data:`RECORD_FIELDS`. The batch script (``batch_*.lua``) reads them by position,
and names them in the same order in its header (a test holds the two together)."""

from __future__ import annotations

#: kind (o|l|s, or x for a message the contract refused), where the message was read, the
#: dedupe digest, the customer, the event time (ms), the first days of its day, ISO week
#: and month (days since the epoch), four fields of its type (an order's status, amount
#: in the reporting currency's micros, original currency and amount as sent; a ticket's
#: action, id, survey and score; a refusal's reason in a1), the Kafka timestamp (ms), and
#: the customer attributes the event carries (country, channel, shop joined by \x1f in
#: that order, each empty when absent; empty when it carries none)
RECORD_FIELDS = (
    "kind",
    "topic",
    "partition",
    "offset",
    "dedupe_id",
    "customer_id",
    "ts_ms",
    "d",
    "w",
    "m",
    "a1",
    "a2",
    "a3",
    "a4",
    "stamp",
    "dims",
)
FIELDS_PER_RECORD = len(RECORD_FIELDS)
KIND, TOPIC, PARTITION, OFFSET, DEDUPE_ID, CUSTOMER_ID = range(6)
A1 = RECORD_FIELDS.index("a1")
STAMP = RECORD_FIELDS.index("stamp")
