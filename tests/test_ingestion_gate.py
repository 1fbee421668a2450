"""The ingestion endpoint's checks: CIDR (403), HMAC (401), throttle (429), token (401)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from fleetcloud.apps.ingestion import (
    Caller,
    IngestionConfigError,
    IngestionGate,
    IngestionThrottled,
    wrap_body,
)
from fleetcloud.core.errors import ApiError, Forbidden, TooManyRequests, Unauthorized

KEY = "whsec-partner-key"
BODY = b'{"device_id": "tank-1", "litres": 420}'


def sign(body: bytes, key: str = KEY) -> str:
    return hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def gate(**config: Any) -> IngestionGate:
    tokens = config.pop("tokens", ())
    mini_tokens = config.pop("mini_tokens", ())
    return IngestionGate.from_config(config, tokens=tokens, mini_tokens=mini_tokens)


def refused(
    g: IngestionGate,
    ip: str = "203.0.113.5",
    headers: dict[str, str] | None = None,
    body: bytes = BODY,
    now: float = 0.0,
    query: dict[str, str] | None = None,
) -> ApiError:
    with pytest.raises(ApiError) as caught:
        g.check(ip, headers or {}, body, now, query=query)
    return caught.value


# --------------------------------------------------------------------------- defaults


def test_an_unconfigured_gate_lets_anyone_in() -> None:
    g = IngestionGate.from_config(None)
    assert g.throttle == 10
    assert g.hmac_header == "x-hmac-sha256"
    caller = g.check("testclient", {}, b"anything", 0.0)
    assert caller == Caller("testclient", signed=False, credential="none")


def test_sdk_defaults_are_accepted_as_stored() -> None:
    stored = {
        "cidr_ranges": [],
        "signing_key": "",
        "signing_key_hash_header": "x-hmac-sha256",
        "throttle": 10,
        "mini_token": False,
        "never_replace_token": False,
    }
    assert IngestionGate.from_config(stored).check("198.51.100.1", {}, BODY, 0.0).signed is False


# --------------------------------------------------------------------------- 1. CIDR


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("203.0.113.5", True),
        ("203.0.113.255", True),
        ("203.0.114.1", False),
        ("10.1.2.3", True),
        ("::ffff:203.0.113.9", True),  # IPv4-mapped IPv6 is the IPv4 address
        ("2001:db8:1::7", True),
        ("2001:db9::1", False),
        ("::1", False),
        ("not-an-ip", False),
        ("", False),
    ],
)
def test_cidr_allow_list(ip: str, allowed: bool) -> None:
    g = gate(cidr_ranges=["203.0.113.0/24", "10.0.0.0/8", "2001:db8::/32"])
    if allowed:
        assert g.check(ip, {}, BODY, 0.0).remote_ip == ip
    else:
        error = refused(g, ip)
        assert isinstance(error, Forbidden)
        assert error.status == 403
        assert "allowed CIDR ranges" in error.message


def test_a_cidr_with_host_bits_and_a_single_address() -> None:
    g = gate(cidr_ranges=["192.0.2.77/24", "198.51.100.7"])
    assert g.check("192.0.2.1", {}, BODY, 0.0)
    assert g.check("198.51.100.7", {}, BODY, 0.0)
    assert refused(g, "198.51.100.8").status == 403


@pytest.mark.parametrize("bad", ["300.0.0.0/8", "10.0.0.0/33", "example.com", ""])
def test_an_invalid_cidr_is_a_config_error(bad: str) -> None:
    with pytest.raises(IngestionConfigError, match="cidr_ranges"):
        gate(cidr_ranges=[bad])


# --------------------------------------------------------------------------- 2. HMAC


@pytest.mark.parametrize(
    "signature",
    [sign(BODY), sign(BODY).upper(), "sha256=" + sign(BODY), "SHA256=" + sign(BODY).upper()],
)
def test_a_correct_signature_passes(signature: str) -> None:
    caller = gate(signing_key=KEY).check("203.0.113.5", {"X-HMAC-SHA256": signature}, BODY, 0.0)
    assert caller.signed


@pytest.mark.parametrize(
    ("signature", "body"),
    [
        (sign(BODY, "another-key"), BODY),
        (sign(BODY), BODY + b" "),  # the raw body, byte for byte
        ("sha256=" + sign(BODY, "another-key"), BODY),
        (sign(BODY)[:-1], BODY),
        ("sha1=" + sign(BODY), BODY),
        (base64.b64encode(bytes.fromhex(sign(BODY))).decode(), BODY),  # hex only
        ("zz", BODY),
    ],
)
def test_a_wrong_signature_is_401(signature: str, body: bytes) -> None:
    error = refused(gate(signing_key=KEY), headers={"x-hmac-sha256": signature}, body=body)
    assert isinstance(error, Unauthorized)
    assert error.status == 401
    assert "does not match the body" in error.message


def test_a_missing_signature_is_401() -> None:
    error = refused(gate(signing_key=KEY))
    assert isinstance(error, Unauthorized)
    assert "missing the x-hmac-sha256 header" in error.message


def test_the_signature_header_is_configurable() -> None:
    g = gate(signing_key=KEY, signing_key_hash_header="X-Partner-Signature")
    assert g.check("203.0.113.5", {"x-partner-signature": sign(BODY)}, BODY, 0.0).signed
    error = refused(g, headers={"x-hmac-sha256": sign(BODY)})
    assert "missing the x-partner-signature header" in error.message


def test_the_key_is_text_not_hex() -> None:
    hex_looking = "00ff"
    g = gate(signing_key=hex_looking)
    assert g.check("203.0.113.5", {"x-hmac-sha256": sign(BODY, hex_looking)}, BODY, 0.0)
    by_bytes = hmac.new(bytes.fromhex(hex_looking), BODY, hashlib.sha256).hexdigest()
    assert refused(g, headers={"x-hmac-sha256": by_bytes}).status == 401


def test_no_signing_key_means_no_signature_check() -> None:
    caller = gate().check("203.0.113.5", {"x-hmac-sha256": "garbage"}, BODY, 0.0)
    assert not caller.signed


# --------------------------------------------------------------------------- 3. throttle


def _burst(g: IngestionGate, now: float, count: int) -> int:
    """How many of ``count`` requests at ``now`` get through."""
    passed = 0
    for _ in range(count):
        try:
            g.check("203.0.113.5", {}, BODY, now)
        except TooManyRequests:
            continue
        passed += 1
    return passed


def test_throttle_defaults_to_10_per_second() -> None:
    g = gate()
    assert _burst(g, 100.0, 10) == 10
    error = refused(g, now=100.0)
    assert isinstance(error, IngestionThrottled)
    assert isinstance(error, TooManyRequests)
    assert error.status == 429
    assert error.retry_after == 1
    assert "throttled: at most 10 requests/s; retry after 1 s" in error.message
    assert _burst(g, 100.1, 5) == 1  # one request's worth came back in 0.1 s
    assert _burst(g, 101.1, 20) == 10  # a full second refills the bucket, no more


@pytest.mark.parametrize(("configured", "effective"), [(30, 30), (31, 30), (1000, 30), (1, 1)])
def test_throttle_is_capped_at_30(configured: int, effective: int) -> None:
    g = gate(throttle=configured)
    assert g.throttle == effective
    assert _burst(g, 0.0, 100) == effective


def test_a_steady_rate_at_the_limit_passes() -> None:
    g = gate(throttle=5)
    assert sum(_burst(g, i * 0.2, 1) for i in range(50)) == 50


def test_throttled_requests_spend_no_budget() -> None:
    g = gate(throttle=2)
    assert _burst(g, 0.0, 2) == 2
    assert _burst(g, 0.1, 50) == 0  # refused, and refusing them costs nothing
    assert _burst(g, 0.5, 5) == 1  # 0.5 s at 2/s is one request, as if the 50 never came


def test_a_clock_stepping_back_refills_nothing() -> None:
    g = gate(throttle=2)
    assert _burst(g, 10.0, 2) == 2
    assert _burst(g, 5.0, 2) == 0
    assert _burst(g, 10.5, 2) == 1


@pytest.mark.parametrize("bad", [0, -1, 0.5, True, "10", float("nan")])
def test_an_invalid_throttle_is_a_config_error(bad: object) -> None:
    with pytest.raises(IngestionConfigError, match="throttle"):
        gate(throttle=bad)


# --------------------------------------------------------------------------- 4. token


def test_a_bearer_token_is_accepted() -> None:
    g = gate(tokens=["tok-abc123"])
    caller = g.check("203.0.113.5", {"Authorization": "Bearer tok-abc123"}, BODY, 0.0)
    assert caller.credential == "token"


def test_the_token_can_come_as_a_query_parameter() -> None:
    g = gate(tokens=["tok-abc123"])
    caller = g.check("203.0.113.5", {}, BODY, 0.0, query={"token": "tok-abc123"})
    assert caller.credential == "token"


def test_a_mini_token_is_accepted_when_enabled() -> None:
    g = gate(mini_token=True, tokens=["tok-abc123"], mini_tokens=["m1x"])
    caller = g.check("203.0.113.5", {"x-mini-token": "m1x"}, BODY, 0.0)
    assert caller.credential == "mini_token"
    by_bearer = g.check("203.0.113.5", {"authorization": "bearer m1x"}, BODY, 0.1)
    assert by_bearer.credential == "mini_token"


def test_a_mini_token_counts_only_when_the_config_enables_it() -> None:
    g = gate(mini_token=False, tokens=["tok-abc123"], mini_tokens=["m1x"])
    error = refused(g, headers={"x-mini-token": "m1x"})
    assert isinstance(error, Unauthorized)


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": "Bearer tok-wrong"},
        {"authorization": "Basic tok-abc123"},
        {"authorization": "tok-abc123"},
        {"x-mini-token": "tok-abc12"},
    ],
)
def test_a_wrong_token_is_401(headers: dict[str, str]) -> None:
    error = refused(gate(tokens=["tok-abc123"]), headers=headers)
    assert isinstance(error, Unauthorized)
    assert error.status == 401


def test_a_missing_token_is_401_and_says_where_to_put_it() -> None:
    error = refused(gate(tokens=["tok-abc123"]))
    assert isinstance(error, Unauthorized)
    assert "Authorization: Bearer" in error.message
    assert "x-mini-token" in error.message


def test_an_empty_configured_token_matches_nothing() -> None:
    g = gate(tokens=["", "tok-abc123"])
    assert refused(g, headers={"authorization": "Bearer "}).status == 401


# --------------------------------------------------------------------------- order


def test_a_forbidden_address_with_a_bad_signature_is_403_not_401() -> None:
    g = gate(cidr_ranges=["10.0.0.0/8"], signing_key=KEY)
    error = refused(g, "203.0.113.5", headers={"x-hmac-sha256": "bad"})
    assert error.status == 403


def test_a_bad_signature_is_401_even_when_throttled_and_costs_no_budget() -> None:
    g = gate(signing_key=KEY, throttle=1)
    good = {"x-hmac-sha256": sign(BODY)}
    for _ in range(5):
        assert refused(g, headers={"x-hmac-sha256": "bad"}).status == 401
    assert g.check("203.0.113.5", good, BODY, 0.0)  # the bad ones spent nothing
    assert refused(g, headers={"x-hmac-sha256": "bad"}).status == 401  # not 429
    assert refused(g, headers=good).status == 429


def test_a_forbidden_address_costs_no_budget() -> None:
    g = gate(cidr_ranges=["203.0.113.0/24"], throttle=1)
    for _ in range(5):
        assert refused(g, "198.51.100.1").status == 403
    assert g.check("203.0.113.5", {}, BODY, 0.0)


def test_throttle_comes_before_the_token_and_a_bad_token_spends_budget() -> None:
    g = gate(tokens=["tok-abc123"], throttle=1)
    assert refused(g, headers={"authorization": "Bearer guess-1"}).status == 401
    assert refused(g, headers={"authorization": "Bearer guess-2"}).status == 429
    assert refused(g, headers={"authorization": "Bearer tok-abc123"}).status == 429
    ok = g.check("203.0.113.5", {"authorization": "Bearer tok-abc123"}, BODY, 1.0)
    assert ok.credential == "token"


def test_everything_configured_and_right() -> None:
    g = gate(
        cidr_ranges=["2001:db8::/32"],
        signing_key=KEY,
        throttle=30,
        mini_token=True,
        tokens=["tok-abc123"],
        mini_tokens=["m1x"],
    )
    headers = {"X-Hmac-Sha256": "sha256=" + sign(BODY), "X-Mini-Token": "m1x"}
    assert g.check("2001:db8::42", headers, BODY, 0.0) == Caller(
        "2001:db8::42", signed=True, credential="mini_token"
    )


# --------------------------------------------------------------------------- body


@pytest.mark.parametrize("body", [BODY, b"", b"\x00\xff\x08\x01 binary"])
def test_wrap_body_is_base64_of_the_raw_bytes(body: bytes) -> None:
    wrapped = wrap_body(body)
    assert isinstance(wrapped, str)
    assert base64.b64decode(wrapped, validate=True) == body


def test_errors_serialise_with_their_status() -> None:
    g = gate(throttle=1)
    g.check("203.0.113.5", {}, BODY, 0.0)
    error = refused(g)
    assert error.to_json() == {
        "error": "IngestionThrottled",
        "message": "throttled: at most 1 requests/s; retry after 1 s",
        "status": 429,
    }
