"""The fleetcloud exception tree.

Every error fleetcloud raises on purpose is a ``FleetError``. Errors that an API client
can cause carry the HTTP status they map to, so a request handler only has to raise::

    FleetError
    ├── ApiError                      (has .status and .message)
    │   ├── BadRequest                400  malformed JSON, wrong types, bad parameters
    │   │   └── ValidationFailed      422  well-formed but rejected by a schema
    │   ├── Unauthorized              401  no token, or a token we do not know
    │   ├── Forbidden                 403  a known token that may not do this
    │   ├── NotFound                  404  missing, or in another organisation
    │   ├── Conflict                  409  a version or idempotency clash
    │   ├── PayloadTooLarge           413  body over the configured limit
    │   └── TooManyRequests           429  throttled
    │       └── IngestionThrottled         an ingestion endpoint's throttle (apps.ingestion)
    ├── StoreError                    the database failed (retriable)
    ├── BusError                      the event bus failed (retriable)
    ├── ConfigError                   fleetcloud is configured wrongly
    └── AppError                      raised inside an app by the SDK (sdk.errors)
        ├── InvalidEnvelope, ConfigInvalid, ConfigNotSet
        ├── InvokingChannelWrite       an app wrote to the channel that invoked it
        ├── NotJsonSerializable
        └── DataApiUnavailable         the data API could not be reached

A dependency's own exceptions are translated where fleetcloud calls it
(``raise StoreError(...) from exc``) so they never reach a user raw.
"""

from __future__ import annotations


class FleetError(Exception):
    """Base of every error fleetcloud raises on purpose."""

    retriable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiError(FleetError):
    """An error an API client caused; carries the HTTP status it maps to."""

    status = 400

    def to_json(self) -> dict[str, object]:
        return {"error": type(self).__name__, "message": self.message, "status": self.status}


class BadRequest(ApiError):
    status = 400


class ValidationFailed(BadRequest):
    status = 422


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class TooManyRequests(ApiError):
    status = 429


class StoreError(FleetError):
    retriable = True


class BusError(FleetError):
    retriable = True


class ConfigError(FleetError):
    pass
