"""The running platform: settings, store, bus and the services on them, started and
stopped together. The API, the CLI and the tests all build one of these."""

from __future__ import annotations

from dataclasses import dataclass, field

from fleetcloud.api.auth import Authenticator
from fleetcloud.api.metrics import Metrics
from fleetcloud.bus.base import Bus, open_bus
from fleetcloud.settings import Settings
from fleetcloud.store.base import Store, open_store


@dataclass
class Platform:
    settings: Settings
    store: Store
    bus: Bus
    auth: Authenticator = field(init=False)
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.auth = Authenticator(self.store, self.settings.token_cache_seconds)

    @classmethod
    def from_settings(cls, settings: Settings) -> Platform:
        store = open_store(settings.database_url)
        return cls(settings, store, open_bus(settings.bus_url, store))

    async def start(self) -> None:
        await self.store.start()
        try:
            await self.bus.start()
        except BaseException:
            await self.store.close()
            raise

    async def close(self) -> None:
        try:
            await self.bus.close()
        finally:
            await self.store.close()

    async def __aenter__(self) -> Platform:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
