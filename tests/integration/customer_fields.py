"""Customers as the store keeps them, for tests that look inside."""

from __future__ import annotations

from store.store import Store


async def stored_fields(store: Store, customer_id: str) -> dict[str, str]:
    """The customer's fields as text, its packed state unpacked (store/read_customers.lua);
    empty for a customer not stored."""
    layout = await store.layout()
    [fields] = await store.customer_fields(layout.prefix_of(customer_id), [customer_id])
    return fields
