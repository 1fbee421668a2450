"""The event bus: in-process by default (durable through the store's outbox), Kafka for
scale. Both read the same outbox, so an acknowledged write's events are never lost."""

from fleetcloud.bus.base import Bus, Subscription, open_bus

__all__ = ["Bus", "Subscription", "open_bus"]
