"""Persistence: one schema, two databases (SQLite by default, PostgreSQL for scale)."""

from fleetcloud.store.base import PublishItem, PublishResult, Store, open_store

__all__ = ["PublishItem", "PublishResult", "Store", "open_store"]
