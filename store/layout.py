"""Every Redis key the project uses is named here (:class:`Keys`), and documented, with
what it holds and its units, in ``docs/store.md``: the one description of the store.

A key is the configured prefix ``P`` followed by its parts joined with ``:`` (``P c:42``
for customer 42); every module of the Redis edge asks :class:`Keys`, and the Lua scripts
receive ``P`` as an argument and join their keys the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from contract.events import ATTRIBUTES

#: Money sums are kept in two integers (batch_state.lua, Money), each below 2^53 where the
#: script's doubles are exact: the micros below MEGA, and the count of whole MEGAs.
MEGA = 10**12


def money_micros(low: int | str | None, high: int | str | None) -> int:
    """A money sum in micros from its two stored parts (absent parts are 0)."""
    return int(low or 0) + int(high or 0) * MEGA


#: The letter of each customer attribute in the stored state and in the key names that
#: count by it (``attrs:<letter>``, ``dim:<letter>:<value>``; batch_state.lua).
ATTRIBUTE_LETTERS = dict(zip(ATTRIBUTES, ("c", "h", "s", "y"), strict=True))


@dataclass(frozen=True, slots=True)
class Keys:
    """Key names under one prefix; the prefix is used as given (it usually ends in ``:``)."""

    prefix: str

    def key(self, *parts: str) -> str:
        """A ``P`` family's key; ``S`` families are named under a shard's prefix."""
        return self.prefix + ":".join(parts)
