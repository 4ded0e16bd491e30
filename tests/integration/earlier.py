"""Customers as the store keeps them, and as earlier versions kept them."""

from __future__ import annotations

from store.store import Store


async def stored_fields(store: Store, customer_id: str) -> dict[str, str]:
    """The customer's fields as text, its packed state unpacked (store/read_customers.lua);
    empty for a customer not stored."""
    layout = await store.layout()
    [(fields, _)] = await store.customer_fields(layout.prefix_of(customer_id), [customer_id])
    return fields


async def unpack_customers(store: Store) -> None:
    """Rewrite every customer hash as earlier versions kept it: a field each, as text, and
    a field per day with placed orders."""
    layout = await store.layout()
    for customer_id in await store.customer_ids():
        fields = await stored_fields(store, customer_id)
        key = layout.prefix_of(customer_id) + "c:" + customer_id
        async with store.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            await pipe.execute()
