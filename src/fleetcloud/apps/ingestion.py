"""The checks an integration's ingestion URL applies to each request, in order.

``IngestionGate.from_config(deployment_config["dv_proc_ingestion"], tokens=…,
mini_tokens=…)`` builds the gate of one installed integration (keys as
``fleetcloud.sdk.triggers.IngestionEndpointConfig`` stores them);
``gate.check(remote_ip, headers, body, now)`` returns the :class:`Caller` or raises:

1. CIDR allow-list (IPv4 and IPv6; empty: anyone)           → ``Forbidden`` 403
2. HMAC-SHA256 of the raw body with the signing key, hex in
   ``signing_key_hash_header`` (default ``x-hmac-sha256``;
   only when a signing key is set)                          → ``Unauthorized`` 401
3. throttle: a token bucket of ``throttle`` requests/s
   (default 10, at most 30)                                 → ``IngestionThrottled`` 429
4. token or mini-token (only when the gate has any)         → ``Unauthorized`` 401

Order matters for the throttle: a request refused at 1 or 2 costs no throttle budget,
and neither does a refused (429) one, but a request refused at 4 has already spent its
share — which is what limits how fast tokens can be guessed, and also means that
without a signing key anyone inside the allowed ranges can use up the budget.

Pure apart from the bucket's counter: no clock is read (``now`` is passed in, in
seconds, from a monotonic clock) and nothing is written anywhere. Keep one gate per
installation for as long as its config and tokens are unchanged (a new gate starts with
a full bucket); it is not thread-safe, so call it from the event loop. Where the
credentials may be: ``Authorization: Bearer <token>``, ``x-mini-token: <token>`` or the
``token`` query parameter (``check(..., query=…)``), each compared in constant time.
``wrap_body`` base64-wraps the raw body for the event's ``payload``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fleetcloud.core.errors import Forbidden, TooManyRequests, Unauthorized
from fleetcloud.sdk.triggers import DEFAULT_HMAC_HEADER, DEFAULT_THROTTLE, MAX_THROTTLE

__all__ = [
    "MINI_TOKEN_HEADER",
    "TOKEN_QUERY_PARAM",
    "Caller",
    "IngestionConfigError",
    "IngestionGate",
    "IngestionThrottled",
    "TokenBucket",
    "wrap_body",
]

MINI_TOKEN_HEADER = "x-mini-token"  # noqa: S105 - a header name, not a secret
TOKEN_QUERY_PARAM = "token"  # noqa: S105 - a query parameter name, not a secret
_SIGNATURE_PREFIX = "sha256="
# Float time: 0.1 s at 10/s refills 0.999…; a request that is due is not refused for that.
_BUCKET_SLACK = 1e-6

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Credential = Literal["token", "mini_token", "none"]


class IngestionConfigError(ValueError):
    """The ingestion config itself is unusable (a bad CIDR, a throttle below 1, …)."""


class IngestionThrottled(TooManyRequests):
    """429 with the whole seconds to wait, for a ``Retry-After`` header."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Caller:
    """Who got through: the address, whether a signature was checked, which credential."""

    remote_ip: str
    signed: bool
    credential: Credential


def wrap_body(body: bytes) -> str:
    """The raw body as standard base64 text (the event's ``payload``)."""
    return base64.b64encode(body).decode("ascii")


class TokenBucket:
    """``rate`` requests per second, bursts of up to ``rate``; starts full."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._last: float | None = None

    def take(self, now: float) -> float:
        """Spend one request; 0.0 if granted, else the seconds until one is available.

        A refused request spends nothing. A clock that steps back refills nothing.
        """
        if self._last is not None and now > self._last:
            self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1 - _BUCKET_SLACK:
            self._tokens = max(0.0, self._tokens - 1)
            return 0.0
        return (1 - self._tokens) / self.rate


class IngestionGate:
    """The four checks of one integration's ingestion endpoint (see the module doc)."""

    def __init__(
        self,
        *,
        cidr_ranges: Iterable[str] = (),
        signing_key: str = "",
        hmac_header: str = DEFAULT_HMAC_HEADER,
        throttle: float = DEFAULT_THROTTLE,
        tokens: Iterable[str] = (),
        mini_tokens: Iterable[str] = (),
    ) -> None:
        self.networks = tuple(_network(text) for text in cidr_ranges)
        self.signing_key = signing_key.encode("utf-8")
        self.hmac_header = (hmac_header or DEFAULT_HMAC_HEADER).strip().lower()
        self.throttle = _throttle(throttle)
        self.bucket = TokenBucket(self.throttle)
        self._tokens = tuple(t.encode("utf-8") for t in tokens if t)
        self._mini_tokens = tuple(t.encode("utf-8") for t in mini_tokens if t)

    @classmethod
    def from_config(
        cls,
        config: Mapping[str, Any] | None,
        *,
        tokens: Iterable[str] = (),
        mini_tokens: Iterable[str] = (),
    ) -> IngestionGate:
        """From a ``dv_proc_ingestion`` value. Mini-tokens count only if ``mini_token``
        is true there; a missing or null key takes the SDK's default."""
        config = config or {}
        return cls(
            cidr_ranges=_strings(config.get("cidr_ranges"), "cidr_ranges"),
            signing_key=_string(config.get("signing_key"), "signing_key"),
            hmac_header=_string(config.get("signing_key_hash_header"), "signing_key_hash_header"),
            throttle=_number(config.get("throttle"), DEFAULT_THROTTLE),
            tokens=tokens,
            mini_tokens=mini_tokens if config.get("mini_token") is True else (),
        )

    def check(
        self,
        remote_ip: str,
        headers: Mapping[str, str],
        body: bytes,
        now: float,
        *,
        query: Mapping[str, str] | None = None,
    ) -> Caller:
        """Apply the checks in order; raise the first refusal, else return the caller."""
        lowered = {k.lower(): v for k, v in headers.items()}
        self._check_address(remote_ip)
        self._check_signature(lowered, body)
        self._check_throttle(now)
        credential = self._check_credential(lowered, query or {})
        return Caller(remote_ip, bool(self.signing_key), credential)

    def _check_address(self, remote_ip: str) -> None:
        if not self.networks:
            return
        address = _address(remote_ip)
        if address is None or not any(address in net for net in self.networks):
            who = remote_ip or "an unknown address"
            raise Forbidden(f"{who} is not in this endpoint's allowed CIDR ranges")

    def _check_signature(self, headers: Mapping[str, str], body: bytes) -> None:
        if not self.signing_key:
            return
        given = headers.get(self.hmac_header)
        if not given:
            raise Unauthorized(f"missing the {self.hmac_header} header (HMAC-SHA256 of the body)")
        expected = hmac.new(self.signing_key, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode("ascii"), _signature(given)):
            raise Unauthorized(f"the {self.hmac_header} signature does not match the body")

    def _check_throttle(self, now: float) -> None:
        wait = self.bucket.take(now)
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise IngestionThrottled(
                f"throttled: at most {self.throttle:g} requests/s; retry after {retry_after} s",
                retry_after,
            )

    def _check_credential(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Credential:
        if not self._tokens and not self._mini_tokens:
            return "none"
        presented = _presented(headers, query)
        if any(_matches(self._tokens, given) for given in presented):
            return "token"
        if any(_matches(self._mini_tokens, given) for given in presented):
            return "mini_token"
        if not presented:
            raise Unauthorized(
                "missing token: send Authorization: Bearer <token>, "
                f"{MINI_TOKEN_HEADER}: <mini-token> or ?{TOKEN_QUERY_PARAM}=<token>"
            )
        raise Unauthorized("the token does not match this endpoint's token or mini-token")


def _presented(headers: Mapping[str, str], query: Mapping[str, str]) -> list[bytes]:
    """Every credential the request carries, from the places the docs name."""
    found = [
        _bearer(headers.get("authorization", "")),
        headers.get(MINI_TOKEN_HEADER, "").strip(),
        query.get(TOKEN_QUERY_PARAM, "").strip(),
    ]
    return [given.encode("utf-8") for given in found if given]


def _bearer(value: str) -> str:
    scheme, _, credential = value.strip().partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


def _matches(known: tuple[bytes, ...], given: bytes) -> bool:
    """Constant-time against each known value; every one is compared."""
    matched = False
    for value in known:
        matched |= hmac.compare_digest(value, given)
    return matched


def _signature(header: str) -> bytes:
    """The hex digest from the header, without an optional ``sha256=`` prefix."""
    value = header.strip()
    if value[: len(_SIGNATURE_PREFIX)].lower() == _SIGNATURE_PREFIX:
        value = value[len(_SIGNATURE_PREFIX) :]
    return value.strip().lower().encode("utf-8")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:203.0.113.5 is 203.0.113.5
    return address


def _network(text: str) -> Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise IngestionConfigError(f"cidr_ranges: {text!r} is not a CIDR range: {exc}") from None


def _throttle(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 1:
        raise IngestionConfigError(f"throttle: {value!r} is not a number of requests/s >= 1")
    return float(min(value, MAX_THROTTLE))


def _strings(value: object, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise IngestionConfigError(f"{key}: expected a list of strings, got {value!r}")
    return list(value)


def _string(value: object, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise IngestionConfigError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _number(value: object, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IngestionConfigError(f"throttle: expected a number, got {value!r}")
    return value
