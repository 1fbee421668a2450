"""Schedules: rate, AWS six-field cron (translated here), five-field cron, disabled.

Expected fire times are worked out from the calendar by hand (2024-01-01 is a Monday,
2024 and 2028 are leap years, 2100 is not).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fleetcloud.apps.schedules import (
    CronSchedule,
    DisabledSchedule,
    RateSchedule,
    ScheduleError,
    parse_schedule,
)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


NEXT_FIRE = [
    # --- AWS six-field: the examples
    ("cron(0 9 * * ? *)", utc(2024, 1, 1, 8, 59, 59), utc(2024, 1, 1, 9, 0)),
    ("cron(0 9 * * ? *)", utc(2024, 1, 1, 9, 0), utc(2024, 1, 2, 9, 0)),  # strictly after
    ("cron(0 18 ? * MON-FRI *)", utc(2024, 1, 5, 18, 0), utc(2024, 1, 8, 18, 0)),  # Fri → Mon
    ("cron(0 18 ? * MON-FRI *)", utc(2024, 1, 6, 7, 0), utc(2024, 1, 8, 18, 0)),  # Sat → Mon
    ("cron(0 8 1 * ? *)", utc(2024, 12, 15), utc(2025, 1, 1, 8, 0)),  # across a year
    ("cron(15 10 ? * 6L 2030)", utc(2024, 1, 1), utc(2030, 1, 25, 10, 15)),  # last Friday
    ("cron(15 10 ? * 6L 2030)", utc(2030, 2, 1), utc(2030, 2, 22, 10, 15)),
    ("cron(15 10 ? * 6L 2030)", utc(2030, 12, 27, 10, 15), None),  # the year field is used up
    ("cron(0 0 ? * 2#1 *)", utc(2023, 12, 31, 12, 0), utc(2024, 1, 1, 0, 0)),  # 1st Monday
    ("cron(0 0 ? * 2#1 *)", utc(2024, 1, 1, 0, 0), utc(2024, 2, 5, 0, 0)),
    ("cron(0 12 L * ? *)", utc(2024, 2, 1), utc(2024, 2, 29, 12, 0)),  # leap February
    ("cron(0 12 L * ? *)", utc(2023, 2, 1), utc(2023, 2, 28, 12, 0)),
    ("cron(0 12 L * ? *)", utc(2024, 1, 31, 12, 0), utc(2024, 2, 29, 12, 0)),
    ("cron(0 12 L * ? *)", utc(2024, 4, 30, 11, 0), utc(2024, 4, 30, 12, 0)),
    ("cron(0 12 15W * ? *)", utc(2024, 6, 1), utc(2024, 6, 14, 12, 0)),  # Sat 15th → Fri
    ("cron(0 12 15W * ? *)", utc(2024, 9, 1), utc(2024, 9, 16, 12, 0)),  # Sun 15th → Mon
    ("cron(0 12 15W * ? *)", utc(2024, 1, 1), utc(2024, 1, 15, 12, 0)),  # Mon 15th stays
    ("cron(0/15 * * * ? *)", utc(2024, 1, 1, 10, 7, 30), utc(2024, 1, 1, 10, 15)),
    ("cron(0/15 * * * ? *)", utc(2024, 12, 31, 23, 50), utc(2025, 1, 1, 0, 0)),
    ("cron(0/15 * * * ? *)", utc(2024, 1, 1, 10, 0), utc(2024, 1, 1, 10, 15)),
    # --- the day-of-week shift: AWS 1 = Sunday, 2 = Monday
    ("cron(0 0 ? * 2 *)", utc(2024, 1, 2), utc(2024, 1, 8)),  # a Monday
    ("cron(0 0 ? * 1 *)", utc(2024, 1, 1), utc(2024, 1, 7)),  # a Sunday
    ("cron(0 0 ? * 7 *)", utc(2024, 1, 1), utc(2024, 1, 6)),  # a Saturday
    ("cron(0 9 ? * SUN *)", utc(2024, 1, 1), utc(2024, 1, 7, 9, 0)),
    ("cron(0 9 ? * sat,sun *)", utc(2024, 1, 1), utc(2024, 1, 6, 9, 0)),  # names, any case
    # --- more L, W, #
    ("cron(0 0 1W * ? *)", utc(2024, 5, 31), utc(2024, 6, 3)),  # Sat 1st → Mon 3rd
    ("cron(0 0 31W * ? *)", utc(2024, 3, 1), utc(2024, 3, 29)),  # Sun 31st → Fri 29th
    ("cron(0 0 31W * ? *)", utc(2024, 4, 1), utc(2024, 5, 31)),  # April has no 31st
    ("cron(0 0 LW * ? *)", utc(2024, 8, 1), utc(2024, 8, 30)),  # Sat 31st → Fri 30th
    ("cron(0 0 LW * ? *)", utc(2024, 7, 1), utc(2024, 7, 31)),  # a Wednesday
    ("cron(0 0 ? * L *)", utc(2024, 1, 1), utc(2024, 1, 27)),  # L alone: the last Saturday
    ("cron(0 0 ? * FRIL *)", utc(2024, 1, 1), utc(2024, 1, 26)),
    ("cron(0 0 ? * 2#5 *)", utc(2024, 1, 30), utc(2024, 4, 29)),  # skips Feb and March
    ("cron(0 0 ? * 6#3 *)", utc(2024, 1, 1), utc(2024, 1, 19)),  # the third Friday
    # --- lists, ranges, steps, months, years
    ("cron(30 6 1 JAN,JUL ? *)", utc(2024, 2, 1), utc(2024, 7, 1, 6, 30)),
    ("cron(5-40/10 9-17 ? * MON,WED,FRI *)", utc(2024, 1, 1, 17, 36), utc(2024, 1, 3, 9, 5)),
    ("cron(1/10 * * * ? *)", utc(2024, 1, 1, 10, 1), utc(2024, 1, 1, 10, 11)),
    ("cron(0 0 1 */4 ? *)", utc(2024, 2, 1), utc(2024, 5, 1)),
    ("cron(0 0 1 1 ? 2030,2035)", utc(2030, 1, 1), utc(2035, 1, 1)),
    ("cron(0 0 1 1 ? 2040/5)", utc(2041, 1, 1), utc(2045, 1, 1)),
    ("cron(0 0 1 1 ? 2040-2042)", utc(2042, 1, 1), None),
    ("cron(0 0 1 1 ? *)", utc(2199, 1, 1), None),  # AWS years end in 2199
    ("cron(59 23 31 12 ? *)", utc(2199, 12, 31, 23, 58), utc(2199, 12, 31, 23, 59)),
    ("cron(0 0 1 1 ? *)", utc(1960, 6, 1), utc(1970, 1, 1)),  # AWS years start in 1970
    # --- leap years
    ("cron(0 0 29 2 ? *)", utc(2024, 3, 1), utc(2028, 2, 29)),
    ("cron(0 0 29 2 ? *)", utc(2097, 1, 1), utc(2104, 2, 29)),  # 2100 is not a leap year
    ("cron(0 0 29 2 ? 2025-2027)", utc(2024, 1, 1), None),
    ("cron(0 0 L 2 ? *)", utc(2100, 1, 1), utc(2100, 2, 28)),
    # --- five-field
    ("0 0 * * 2", utc(2024, 1, 2), utc(2024, 1, 9)),  # a Tuesday
    ("0 0 * * 2", utc(2024, 1, 1, 12, 0), utc(2024, 1, 2)),
    ("0 0 * * 0", utc(2024, 1, 1), utc(2024, 1, 7)),  # 0 and 7 are Sunday
    ("0 0 * * 7", utc(2024, 1, 1), utc(2024, 1, 7)),
    ("0 0 * * sun", utc(2024, 1, 1), utc(2024, 1, 7)),
    ("*/5 * * * *", utc(2024, 1, 1, 10, 2, 30), utc(2024, 1, 1, 10, 5)),
    ("*/5 * * * *", utc(2024, 12, 31, 23, 55), utc(2025, 1, 1, 0, 0)),
    ("30 8-17/3 * * 1-5", utc(2024, 1, 1, 12, 0), utc(2024, 1, 1, 14, 30)),
    ("0 0 13 * FRI", utc(2024, 1, 1), utc(2024, 1, 5)),  # both set: the 13th OR a Friday
    ("0 0 */10 * FRI", utc(2024, 1, 1), utc(2024, 3, 1)),  # '*…' day: the 1st/11th/… AND Fri
    ("0 0 29 2 *", utc(2097, 1, 1), utc(2104, 2, 29)),
    ("0 12 1 jan-mar *", utc(2024, 3, 2), utc(2025, 1, 1, 12, 0)),
    # --- rate, aligned to the Unix epoch
    ("rate(5 minutes)", utc(2024, 1, 1, 10, 2, 30), utc(2024, 1, 1, 10, 5)),
    ("rate(5 minutes)", utc(2024, 1, 1, 10, 5), utc(2024, 1, 1, 10, 10)),
    ("rate(1 minute)", utc(2024, 1, 1, 10, 0), utc(2024, 1, 1, 10, 1)),
    ("rate(2 hours)", utc(2024, 1, 1, 1, 0), utc(2024, 1, 1, 2, 0)),
    ("rate(1 hour)", utc(2024, 12, 31, 23, 30), utc(2025, 1, 1)),
    ("rate(1 day)", utc(2024, 2, 28, 23, 59), utc(2024, 2, 29)),
    ("rate(7 days)", utc(2024, 1, 1), utc(2024, 1, 4)),  # the epoch was a Thursday
    ("rate(5 minute)", utc(2024, 1, 1, 10, 2), utc(2024, 1, 1, 10, 5)),  # singular accepted
    ("rate(1 hours)", utc(2024, 1, 1, 10, 2), utc(2024, 1, 1, 11, 0)),  # plural accepted
    (
        "RATE( 3 Days )",
        utc(2024, 1, 1),
        utc(2024, 1, 3),
    ),  # day 19723 since the epoch; 19725 % 3 == 0
    # --- never
    ("disabled", utc(2024, 1, 1), None),
    ("  Disabled ", utc(2024, 1, 1), None),
    ("", utc(2024, 1, 1), None),
]


@pytest.mark.parametrize(("expression", "start", "expected"), NEXT_FIRE)
def test_next_fire_time(expression: str, start: datetime, expected: datetime | None) -> None:
    fired = parse_schedule(expression).next_after(start)
    assert fired == expected
    if fired is not None:
        assert fired.tzinfo is UTC


def test_aws_2_is_monday_and_five_field_2_is_tuesday() -> None:
    aws = parse_schedule("cron(0 0 ? * 2 *)")
    classic = parse_schedule("0 0 * * 2")
    start = utc(2024, 1, 1)  # a Monday, at midnight: both fire later than this
    aws_fires = _fires(aws, start, 5)
    classic_fires = _fires(classic, start, 5)
    assert {d.strftime("%A") for d in aws_fires} == {"Monday"}
    assert {d.strftime("%A") for d in classic_fires} == {"Tuesday"}
    assert aws.describe() == "at 00:00, on Monday (UTC)"
    assert classic.describe() == "at 00:00, on Tuesday (UTC)"


def _fires(schedule: object, start: datetime, count: int) -> list[datetime]:
    assert isinstance(schedule, CronSchedule)
    fires: list[datetime] = []
    at: datetime | None = start
    for _ in range(count):
        assert at is not None
        at = schedule.next_after(at)
        assert at is not None
        fires.append(at)
    return fires


def test_successive_fires_are_increasing_and_complete() -> None:
    schedule = parse_schedule("cron(0 9,17 ? * MON-FRI *)")
    fires = _fires(schedule, utc(2024, 1, 5, 12, 0), 6)  # Friday noon
    assert fires == [
        utc(2024, 1, 5, 17, 0),
        utc(2024, 1, 8, 9, 0),
        utc(2024, 1, 8, 17, 0),
        utc(2024, 1, 9, 9, 0),
        utc(2024, 1, 9, 17, 0),
        utc(2024, 1, 10, 9, 0),
    ]


def test_aware_non_utc_start_and_utc_result() -> None:
    brisbane = timezone(timedelta(hours=10))
    start = datetime(2024, 1, 1, 19, 0, tzinfo=brisbane)  # 09:00 UTC
    assert parse_schedule("cron(0 9 * * ? *)").next_after(start) == utc(2024, 1, 2, 9, 0)


def test_naive_datetime_is_refused() -> None:
    for expression in ("cron(0 9 * * ? *)", "rate(5 minutes)", "disabled"):
        with pytest.raises(ValueError, match="aware datetime"):
            parse_schedule(expression).next_after(datetime(2024, 1, 1))


def test_rate_anchor() -> None:
    schedule = parse_schedule("rate(5 minutes)", anchor=utc(2024, 1, 1, 0, 2))
    assert schedule.next_after(utc(2024, 1, 1, 10, 0)) == utc(2024, 1, 1, 10, 2)
    assert schedule.next_after(utc(2023, 12, 31, 23, 59)) == utc(2024, 1, 1, 0, 2)


def test_kinds_and_enabled() -> None:
    assert isinstance(parse_schedule("disabled"), DisabledSchedule)
    assert isinstance(parse_schedule(None), DisabledSchedule)
    assert not parse_schedule("disabled").enabled
    rate = parse_schedule("rate(5 minutes)")
    assert isinstance(rate, RateSchedule)
    assert rate.period == timedelta(minutes=5)
    assert rate.enabled
    aws = parse_schedule("cron(0 9 * * ? *)")
    assert isinstance(aws, CronSchedule)
    assert aws.aws
    assert aws.expression == "cron(0 9 * * ? *)"
    classic = parse_schedule("*/5 * * * *")
    assert isinstance(classic, CronSchedule)
    assert not classic.aws
    assert classic.years is None


@pytest.mark.parametrize(
    ("expression", "description"),
    [
        ("disabled", "disabled (never fires)"),
        ("rate(1 minute)", "every minute"),
        ("rate(5 minutes)", "every 5 minutes"),
        ("rate(1 day)", "every day"),
        ("cron(0 9 * * ? *)", "at 09:00, every day (UTC)"),
        ("cron(0 18 ? * MON-FRI *)", "at 18:00, on Monday-Friday (UTC)"),
        ("cron(0 8 1 * ? *)", "at 08:00, on day 1 of the month (UTC)"),
        (
            "cron(15 10 ? * 6L 2030)",
            "at 10:15, on the last Friday of the month, in 2030 (UTC)",
        ),
        ("cron(0 0 ? * 2#1 *)", "at 00:00, on the first Monday of the month (UTC)"),
        ("cron(0 12 L * ? *)", "at 12:00, on the last day of the month (UTC)"),
        (
            "cron(0 12 15W * ? *)",
            "at 12:00, on the weekday (Mon-Fri) nearest day 15 of the month (UTC)",
        ),
        ("cron(0/15 * * * ? *)", "every 15 minutes, every day (UTC)"),
        ("*/5 * * * *", "every 5 minutes, every day (UTC)"),
        ("0 0 13 * FRI", "at 00:00, on day 13 of the month or on Friday (UTC)"),
        ("0 6 1 JAN,JUL *", "at 06:00, on day 1 of the month, in Jan, Jul (UTC)"),
    ],
)
def test_describe(expression: str, description: str) -> None:
    assert parse_schedule(expression).describe() == description


INVALID = [
    # expression, field, part of the problem
    ("every day", "expression", "expected rate(N minutes|hours|days)"),
    ("0 9 * * ? *", "expression", "six-field cron must be written cron(...)"),
    ("cron(0 9 * * ?)", "expression", "cron(...) takes six fields"),
    ("cron(*/5 * * * *)", "expression", "write a five-field cron without cron(...)"),
    ("cron(0 9 * * ? * *)", "expression", "got 7"),
    ("cron()", "expression", "got 0"),
    ("0 9 * *", "expression", "expected rate"),
    # AWS: the ? rule
    ("cron(0 9 * * * *)", "day-of-week", "'?' in exactly one of day-of-month and day-of-week"),
    ("cron(0 9 1 * MON *)", "day-of-week", "'?' in exactly one"),
    ("cron(0 9 ? * ? *)", "day-of-month", "'?' may be used in only one"),
    ("cron(? 9 * * ? *)", "minutes", "'?' is only allowed in day-of-month or day-of-week"),
    # AWS: ranges of values
    ("cron(60 9 * * ? *)", "minutes", "60 is out of range 0-59"),
    ("cron(0 24 * * ? *)", "hours", "24 is out of range 0-23"),
    ("cron(0 9 0 * ? *)", "day-of-month", "0 is out of range 1-31"),
    ("cron(0 9 32 * ? *)", "day-of-month", "32 is out of range 1-31"),
    ("cron(0 9 * 13 ? *)", "month", "13 is out of range 1-12"),
    ("cron(0 9 ? * 0 *)", "day-of-week", "0 is out of range 1-7"),
    ("cron(0 9 ? * 8 *)", "day-of-week", "8 is out of range 1-7"),
    ("cron(0 9 * * ? 1969)", "year", "1969 is out of range 1970-2199"),
    ("cron(0 9 * * ? 2200)", "year", "2200 is out of range 1970-2199"),
    ("cron(0 9 * FOO ? *)", "month", "'FOO' is neither a number in range 1-12 nor a name JAN-DEC"),
    ("cron(0 9 ? * MONDAY *)", "day-of-week", "nor a name SUN-SAT"),
    ("cron(x 9 * * ? *)", "minutes", "'X' is not a number in range 0-59"),
    ("cron(0 99999999999999 * * ? *)", "hours", "99999999999999 is out of range 0-23"),
    # AWS: lists, ranges, steps
    ("cron(0 9 1,,15 * ? *)", "day-of-month", "empty value"),
    ("cron(40-10 * * * ? *)", "minutes", "range 40-10 runs backwards"),
    ("cron(*/0 * * * ? *)", "minutes", "step '0' must be a whole number of at least 1"),
    ("cron(0/x * * * ? *)", "minutes", "step 'X' must be"),
    ("cron(0 9 ? * 2/2 *)", "day-of-week", "'/' is not allowed in day-of-week"),
    # AWS: L, W, #
    ("cron(0 9 L-2 * ? *)", "day-of-month", "'L' and 'W' stand alone"),
    ("cron(0 9 1,L * ? *)", "day-of-month", "'L' and 'W' stand alone"),
    ("cron(0 9 1-5W * ? *)", "day-of-month", "'L' and 'W' stand alone"),
    ("cron(0 9 32W * ? *)", "day-of-month", "32 is out of range 1-31"),
    ("cron(0 9 ? * 2#6 *)", "day-of-week", "the n in day#n must be 1-5"),
    ("cron(0 9 ? * 2#0 *)", "day-of-week", "the n in day#n must be 1-5"),
    ("cron(0 9 ? * 8#1 *)", "day-of-week", "8 is out of range 1-7"),
    ("cron(0 9 ? * 3#1,6#3 *)", "day-of-week", "'#' and 'L' take one day"),
    ("cron(0 9 ? * 2-6L *)", "day-of-week", "'#' and 'L' take one day"),
    ("cron(0 9 ? * W *)", "day-of-week", "'W' is not allowed here"),
    ("cron(0 9 * * L *)", "day-of-week", "'?' in exactly one"),
    # never fires
    ("cron(0 9 30 2 ? *)", "day-of-month", "day 30 never occurs in Feb"),
    ("cron(0 9 31 APR,JUN,SEP,NOV ? *)", "day-of-month", "day 31 never occurs in Apr, Jun"),
    ("cron(0 9 31W 2 ? *)", "day-of-month", "day 31 never occurs in Feb"),
    ("0 9 31 4 *", "day-of-month", "day 31 never occurs in Apr"),
    # five-field: AWS-only syntax and ranges
    ("0 9 * * ?", "day-of-week", "'?' belongs to the AWS form"),
    ("0 9 ? * *", "day-of-month", "'?' belongs to the AWS form"),
    ("0 9 L * *", "day-of-month", "'L' or 'W' belongs to the AWS form"),
    ("0 9 15W * *", "day-of-month", "'L' or 'W' belongs to the AWS form"),
    ("0 9 * * 5L", "day-of-week", "'#' or 'L' belongs to the AWS form"),
    ("0 9 * * 1#2", "day-of-week", "'#' or 'L' belongs to the AWS form"),
    ("0 9 * * 8", "day-of-week", "8 is out of range 0-7"),
    ("60 * * * *", "minutes", "60 is out of range 0-59"),
    # rate
    ("rate(0 minutes)", "rate", "the value must be at least 1"),
    ("rate(-5 minutes)", "rate", "'-5' is not a whole number"),
    ("rate(1.5 hours)", "rate", "'1.5' is not a whole number"),
    ("rate(five minutes)", "rate", "'five' is not a whole number"),
    ("rate(5 weeks)", "rate", "unit 'weeks' is not minute(s), hour(s) or day(s)"),
    ("rate(5 seconds)", "rate", "unit 'seconds'"),
    ("rate(5)", "rate", "expected rate(N unit)"),
    ("rate()", "rate", "expected rate(N unit)"),
    ("rate(5 minutes please)", "rate", "expected rate(N unit)"),
    ("rate(99999999999999 days)", "rate", "99999999999999 days is too long a period"),
]


@pytest.mark.parametrize(("expression", "field", "problem"), INVALID)
def test_invalid_expression(expression: str, field: str, problem: str) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_schedule(expression)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.field == field
    assert problem in error.problem
    assert str(error).startswith(f"invalid schedule {expression.strip()!r}: {field}: ")


def test_every_expression_the_sdk_documents_parses() -> None:
    for expression in ("rate(5 minutes)", "cron(0 9 * * ? *)", "*/5 * * * *", "disabled"):
        parse_schedule(expression)
