"""Schedules: when an installation's ``on_schedule`` runs.

``parse_schedule(text)`` reads the ``dv_proc_schedules`` value of a deployment config
(see ``fleetcloud.sdk.triggers.ScheduleConfig``) into a :class:`Schedule`;
``schedule.next_after(dt)`` is the first fire time strictly after ``dt``. Pure: values in,
values out; the dispatcher owns the clock. All times are UTC. docs/schedules-and-ingestion.md
has the accepted syntax.

=================================  ===============================================
``disabled`` or empty              :class:`DisabledSchedule`, never fires
``rate(5 minutes)``                :class:`RateSchedule`, every N minutes/hours/days
``cron(0 9 * * ? *)``              :class:`CronSchedule`, AWS six fields (translated
                                   here: ``?``, day-of-week 1-7 with SUN = 1, ``L``,
                                   ``W``, ``#``, the year field)
``*/5 * * * *``                    :class:`CronSchedule`, classic five-field cron
                                   (day-of-week 0-7 with SUN = 0 or 7)
=================================  ===============================================

The same digit means different days in the two forms: AWS ``2`` is Monday, five-field
``2`` is Tuesday. Both are matched here, field by field; no expression is handed to a
cron library (croniter reads a six-field AWS expression as having a seconds field).
"""

from __future__ import annotations

import calendar
import re
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import ClassVar

__all__ = [
    "CronSchedule",
    "DisabledSchedule",
    "RateSchedule",
    "Schedule",
    "ScheduleError",
    "parse_schedule",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
AWS_YEARS = (1970, 2199)
# The Gregorian calendar repeats every 400 years, so a five-field expression that has
# not fired within 400 years of a start never will.
_CALENDAR_CYCLE_YEARS = 400

_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_WEEKDAY_WORDS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_LONGEST_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_ORDINALS = ("first", "second", "third", "fourth", "fifth")
_RATE_UNITS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
_RATE = re.compile(r"rate\((?P<body>.*)\)", re.IGNORECASE | re.DOTALL)
_CRON = re.compile(r"cron\((?P<body>.*)\)", re.IGNORECASE | re.DOTALL)
_DIGITS = re.compile(r"[0-9]+")


class ScheduleError(ValueError):
    """A schedule expression that cannot be read; names the field and the problem."""

    def __init__(self, expression: str, field: str, problem: str) -> None:
        super().__init__(f"invalid schedule {expression!r}: {field}: {problem}")
        self.expression = expression
        self.field = field
        self.problem = problem


class _Invalid(Exception):
    """Raised inside the parser; ``parse_schedule`` adds the expression."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field = field
        self.problem = problem


# --------------------------------------------------------------------------- schedules


class Schedule(ABC):
    """When something fires. ``next_after`` is strictly after; ``None`` means never again."""

    kind: ClassVar[str]
    expression: str

    @property
    def enabled(self) -> bool:
        """False only for a schedule that never fires (``disabled``)."""
        return True

    @abstractmethod
    def next_after(self, dt: datetime) -> datetime | None:
        """The first fire time strictly after the aware datetime ``dt``, in UTC."""

    @abstractmethod
    def describe(self) -> str:
        """The schedule in words, for the console and logs."""


@dataclass(frozen=True)
class DisabledSchedule(Schedule):
    """``disabled`` (or an empty value): never fires."""

    kind: ClassVar[str] = "disabled"
    expression: str = "disabled"

    @property
    def enabled(self) -> bool:
        return False

    def next_after(self, dt: datetime) -> datetime | None:
        _utc(dt)
        return None

    def describe(self) -> str:
        return "disabled (never fires)"


@dataclass(frozen=True)
class RateSchedule(Schedule):
    """``rate(N unit)``: fires at ``anchor + k * period`` for every integer ``k``.

    The anchor defaults to the Unix epoch, so ``rate(1 hour)`` fires on the hour and
    ``rate(1 day)`` at midnight UTC, and the fire times survive a restart unchanged.
    """

    kind: ClassVar[str] = "rate"
    expression: str
    period: timedelta
    value: int
    unit: str
    anchor: datetime = EPOCH

    def next_after(self, dt: datetime) -> datetime | None:
        periods = (_utc(dt) - self.anchor) // self.period + 1
        try:
            return self.anchor + periods * self.period
        except OverflowError:
            return None

    def describe(self) -> str:
        if self.value == 1:
            return f"every {self.unit}"
        return f"every {self.value} {self.unit}s"


@dataclass(frozen=True)
class CronSchedule(Schedule):
    """A cron expression, AWS six-field (``aws=True``) or five-field, matched in UTC."""

    kind: ClassVar[str] = "cron"
    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: DayRule
    months: tuple[int, ...]
    years: tuple[int, ...] | None = None  # None: any year (five-field)
    aws: bool = False

    def next_after(self, dt: datetime) -> datetime | None:
        start = _next_minute(_utc(dt))
        if start is None:
            return None
        for day in self._days_from(start.date()):
            earliest = (start.hour, start.minute) if day == start.date() else (0, 0)
            found = self._first_time(*earliest)
            if found is not None:
                return datetime(day.year, day.month, day.day, *found, tzinfo=UTC)
        return None

    def describe(self) -> str:
        parts = [_describe_times(self.minutes, self.hours), self.days.describe()]
        if len(self.months) < 12:
            parts.append("in " + _join_ranges(self.months, _month_word))
        if self.years is not None and len(self.years) < AWS_YEARS[1] - AWS_YEARS[0] + 1:
            parts.append("in " + _join_ranges(self.years, str))
        return ", ".join(parts) + " (UTC)"

    def _first_time(self, hour: int, minute: int) -> tuple[int, int] | None:
        for h in self.hours[bisect_left(self.hours, hour) :]:
            i = bisect_left(self.minutes, minute if h == hour else 0)
            if i < len(self.minutes):
                return h, self.minutes[i]
        return None

    def _days_from(self, start: date) -> Iterator[date]:
        for year in self._years_from(start.year):
            for month in self.months:
                if (year, month) < (start.year, start.month):
                    continue
                for d in self.days.days_in(year, month):
                    day = date(year, month, d)
                    if day >= start:
                        yield day

    def _years_from(self, first: int) -> Iterable[int]:
        if self.years is None:
            return range(first, min(first + _CALENDAR_CYCLE_YEARS, 9999) + 1)
        return self.years[bisect_left(self.years, first) :]


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"schedules need an aware datetime (UTC), got naive {dt.isoformat()}")
    return dt.astimezone(UTC)


def _next_minute(dt: datetime) -> datetime | None:
    try:
        return dt.replace(second=0, microsecond=0) + timedelta(minutes=1)
    except OverflowError:
        return None


# --------------------------------------------------------------------------- day rules


class DayRule(ABC):
    """Which days of a month a cron expression fires on."""

    @abstractmethod
    def days_in(self, year: int, month: int) -> list[int]:
        """The matching days of ``month``, ascending."""

    @abstractmethod
    def describe(self) -> str:
        """E.g. ``on the last day of the month``."""

    def first_day_needed(self) -> int:
        """The smallest day-of-month a month must have for the rule ever to match in it."""
        return 1


def _month_length(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _weekday(year: int, month: int, day: int) -> int:
    """Monday = 0 … Sunday = 6 (Python's numbering, used inside this module)."""
    return calendar.weekday(year, month, day)


@dataclass(frozen=True)
class MonthDays(DayRule):
    """Day-of-month values (``1,15``, ``1-7``, ``*/2``, ``*``)."""

    days: frozenset[int]

    def days_in(self, year: int, month: int) -> list[int]:
        last = _month_length(year, month)
        return sorted(d for d in self.days if d <= last)

    def describe(self) -> str:
        if len(self.days) == 31:
            return "every day"
        return f"on day {_join_ranges(sorted(self.days), str)} of the month"

    def first_day_needed(self) -> int:
        return min(self.days)


@dataclass(frozen=True)
class Weekdays(DayRule):
    """Days of the week; ``weekdays`` uses Monday = 0 … Sunday = 6."""

    weekdays: frozenset[int]

    def days_in(self, year: int, month: int) -> list[int]:
        first, last = calendar.monthrange(year, month)
        return [d for d in range(1, last + 1) if (first + d - 1) % 7 in self.weekdays]

    def describe(self) -> str:
        if len(self.weekdays) == 7:
            return "every day"
        return "on " + self.names()

    def names(self) -> str:
        """E.g. ``Monday-Friday`` or ``Monday, Wednesday``."""
        return _join_ranges(sorted(self.weekdays), _weekday_word)


@dataclass(frozen=True)
class LastDay(DayRule):
    """AWS ``L`` in day-of-month."""

    def days_in(self, year: int, month: int) -> list[int]:
        return [_month_length(year, month)]

    def describe(self) -> str:
        return "on the last day of the month"


@dataclass(frozen=True)
class LastWeekday(DayRule):
    """AWS ``LW``: the last Monday-to-Friday day of the month."""

    def days_in(self, year: int, month: int) -> list[int]:
        last = _month_length(year, month)
        return [last - max(0, _weekday(year, month, last) - 4)]

    def describe(self) -> str:
        return "on the last weekday (Mon-Fri) of the month"


@dataclass(frozen=True)
class NearestWeekday(DayRule):
    """AWS ``15W``: the Monday-to-Friday day nearest the 15th, within the same month.

    Saturday moves to Friday and Sunday to Monday, unless that leaves the month (``1W``
    on a Saturday is Monday the 3rd; ``31W`` on a Sunday is Friday the 29th). A month
    without that day (``31W`` in April) does not fire.
    """

    day: int

    def days_in(self, year: int, month: int) -> list[int]:
        last = _month_length(year, month)
        if self.day > last:
            return []
        weekday = _weekday(year, month, self.day)
        if weekday == 5:  # Saturday
            return [self.day - 1 if self.day > 1 else self.day + 2]
        if weekday == 6:  # Sunday
            return [self.day + 1 if self.day < last else self.day - 2]
        return [self.day]

    def describe(self) -> str:
        return f"on the weekday (Mon-Fri) nearest day {self.day} of the month"

    def first_day_needed(self) -> int:
        return self.day


@dataclass(frozen=True)
class NthWeekday(DayRule):
    """AWS ``6#3``: the n-th such weekday of the month (months without one do not fire)."""

    weekday: int
    n: int

    def days_in(self, year: int, month: int) -> list[int]:
        first, last = calendar.monthrange(year, month)
        day = 1 + (self.weekday - first) % 7 + 7 * (self.n - 1)
        return [day] if day <= last else []

    def describe(self) -> str:
        return f"on the {_ORDINALS[self.n - 1]} {_weekday_word(self.weekday)} of the month"


@dataclass(frozen=True)
class LastWeekdayOf(DayRule):
    """AWS ``6L``: the last such weekday of the month (``L`` alone: the last Saturday)."""

    weekday: int

    def days_in(self, year: int, month: int) -> list[int]:
        last = _month_length(year, month)
        return [last - (_weekday(year, month, last) - self.weekday) % 7]

    def describe(self) -> str:
        return f"on the last {_weekday_word(self.weekday)} of the month"


@dataclass(frozen=True)
class ClassicDays(DayRule):
    """Five-field day-of-month and day-of-week, combined as Vixie cron does: when both
    are restricted (neither starts with ``*``) a day matching either fires; otherwise a
    day must match both."""

    month_days: MonthDays
    weekdays: Weekdays
    either: bool

    def days_in(self, year: int, month: int) -> list[int]:
        by_date = set(self.month_days.days_in(year, month))
        by_weekday = set(self.weekdays.days_in(year, month))
        return sorted(by_date | by_weekday if self.either else by_date & by_weekday)

    def describe(self) -> str:
        if self.either:
            return f"{self.month_days.describe()} or {self.weekdays.describe()}"
        if len(self.weekdays.weekdays) == 7:
            return self.month_days.describe()
        if len(self.month_days.days) == 31:
            return self.weekdays.describe()
        return f"{self.month_days.describe()}, if that is {self.weekdays.names()}"

    def first_day_needed(self) -> int:
        return 1 if self.either else self.month_days.first_day_needed()


# --------------------------------------------------------------------------- parsing


def parse_schedule(text: str | None, *, anchor: datetime | None = None) -> Schedule:
    """Read a ``dv_proc_schedules`` value; raise :class:`ScheduleError` if it is invalid.

    ``anchor`` (aware) aligns ``rate(...)`` schedules; default: the Unix epoch.
    """
    expression = (text or "").strip()
    try:
        return _parse(expression, EPOCH if anchor is None else _utc(anchor))
    except _Invalid as exc:
        raise ScheduleError(expression, exc.field, exc.problem) from None


def _parse(expression: str, anchor: datetime) -> Schedule:
    if expression == "" or expression.lower() == "disabled":
        return DisabledSchedule()
    rate = _RATE.fullmatch(expression)
    if rate is not None:
        return _parse_rate(expression, rate["body"], anchor)
    cron = _CRON.fullmatch(expression)
    if cron is not None:
        return _parse_aws(expression, cron["body"].split())
    fields = expression.split()
    if len(fields) == 5:
        return _parse_classic(expression, fields)
    if len(fields) == 6:
        raise _Invalid("expression", "a six-field cron must be written cron(...) (AWS form)")
    raise _Invalid(
        "expression",
        "expected rate(N minutes|hours|days), cron(<six AWS fields>), "
        "a five-field cron such as */5 * * * *, or disabled",
    )


def _parse_rate(expression: str, body: str, anchor: datetime) -> RateSchedule:
    words = body.split()
    if len(words) != 2:
        raise _Invalid("rate", "expected rate(N unit), e.g. rate(5 minutes)")
    count, unit = words[0], words[1].lower()
    value = _whole(count)
    if value is None:
        raise _Invalid("rate", f"{count!r} is not a whole number")
    if value < 1:
        raise _Invalid("rate", "the value must be at least 1")
    base = _RATE_UNITS.get(unit.removesuffix("s"))
    if base is None:
        raise _Invalid("rate", f"unit {unit!r} is not minute(s), hour(s) or day(s)")
    try:
        period = value * base
    except OverflowError:
        raise _Invalid("rate", f"{count} {unit} is too long a period") from None
    return RateSchedule(expression, period, value, unit.removesuffix("s"), anchor)


@dataclass(frozen=True)
class _Spec:
    """One cron field: its name (as errors say it), its range and its names."""

    name: str
    low: int
    high: int
    names: Mapping[str, int] = field(default_factory=dict)
    steps: bool = True

    def span(self) -> str:
        return f"{self.low}-{self.high}"


_MINUTES = _Spec("minutes", 0, 59)
_HOURS = _Spec("hours", 0, 23)
_DAY_OF_MONTH = _Spec("day-of-month", 1, 31)
_MONTH = _Spec("month", 1, 12, {name: i + 1 for i, name in enumerate(_MONTH_NAMES)})
_AWS_DAY_OF_WEEK = _Spec(
    "day-of-week", 1, 7, {name: i + 1 for i, name in enumerate(_DAY_NAMES)}, steps=False
)
_CLASSIC_DAY_OF_WEEK = _Spec("day-of-week", 0, 7, {name: i for i, name in enumerate(_DAY_NAMES)})
_YEAR = _Spec("year", *AWS_YEARS)


def _parse_aws(expression: str, fields: list[str]) -> CronSchedule:
    if len(fields) != 6:
        raise _Invalid(
            "expression",
            f"cron(...) takes six fields (minutes hours day-of-month month day-of-week year), "
            f"got {len(fields)}; write a five-field cron without cron(...)",
        )
    minutes, hours, month_day, month, week_day, year = fields
    months = _sorted(_parse_values(month, _MONTH))
    days = _aws_days(month_day, week_day)
    _check_possible(days, months)
    return CronSchedule(
        expression,
        minutes=_sorted(_parse_values(minutes, _MINUTES)),
        hours=_sorted(_parse_values(hours, _HOURS)),
        days=days,
        months=months,
        years=_sorted(_parse_values(year, _YEAR)),
        aws=True,
    )


def _parse_classic(expression: str, fields: list[str]) -> CronSchedule:
    minutes, hours, month_day, month, week_day = fields
    _reject_aws_only(month_day, week_day)
    months = _sorted(_parse_values(month, _MONTH))
    days = ClassicDays(
        MonthDays(_parse_values(month_day, _DAY_OF_MONTH)),
        Weekdays(frozenset((v - 1) % 7 for v in _parse_values(week_day, _CLASSIC_DAY_OF_WEEK))),
        either=not (month_day.startswith("*") or week_day.startswith("*")),
    )
    _check_possible(days, months)
    return CronSchedule(
        expression,
        minutes=_sorted(_parse_values(minutes, _MINUTES)),
        hours=_sorted(_parse_values(hours, _HOURS)),
        days=days,
        months=months,
    )


def _reject_aws_only(month_day: str, week_day: str) -> None:
    aws = "belongs to the AWS form: write cron(...) with six fields"
    for name, text in (("day-of-month", month_day), ("day-of-week", week_day)):
        if "?" in text:
            raise _Invalid(name, f"'?' {aws}, or use '*'")
    if re.search(r"[LW]", month_day.upper()):
        raise _Invalid("day-of-month", f"{month_day!r}: 'L' or 'W' {aws}")
    if "#" in week_day or week_day.upper().endswith("L"):
        raise _Invalid("day-of-week", f"{week_day!r}: '#' or 'L' {aws}")


def _aws_days(month_day: str, week_day: str) -> DayRule:
    if month_day == "?" and week_day == "?":
        raise _Invalid(
            "day-of-month", "'?' may be used in only one of day-of-month and day-of-week"
        )
    if week_day == "?":
        return _aws_month_day(month_day.upper())
    if month_day == "?":
        return _aws_week_day(week_day.upper())
    raise _Invalid(
        "day-of-week",
        "AWS needs '?' in exactly one of day-of-month and day-of-week, "
        "e.g. cron(0 9 * * ? *) or cron(0 9 ? * MON *)",
    )


def _aws_month_day(text: str) -> DayRule:
    if text == "L":
        return LastDay()
    if text == "LW":
        return LastWeekday()
    if "L" in text or "W" in text:
        if not re.fullmatch(r"[0-9]+W", text):
            raise _Invalid(
                "day-of-month", f"{text!r}: 'L' and 'W' stand alone, as L, LW or one day like 15W"
            )
        return NearestWeekday(_value(text[:-1], _DAY_OF_MONTH))
    return MonthDays(_parse_values(text, _DAY_OF_MONTH))


def _aws_week_day(text: str) -> DayRule:
    special = "#" in text or text.endswith("L")
    if special and re.search(r"[,*/-]", text):
        raise _Invalid(
            "day-of-week", f"{text!r}: '#' and 'L' take one day, like 6#3 or 6L, and stand alone"
        )
    if "#" in text:
        return _nth_weekday(text)
    if text == "L":
        return LastWeekdayOf(5)  # the last day of an AWS week is Saturday
    if text.endswith("L"):
        return LastWeekdayOf(_aws_weekday(_value(text[:-1], _AWS_DAY_OF_WEEK)))
    return Weekdays(frozenset(_aws_weekday(v) for v in _parse_values(text, _AWS_DAY_OF_WEEK)))


def _nth_weekday(text: str) -> NthWeekday:
    day, _, nth = text.partition("#")
    weekday = _aws_weekday(_value(day, _AWS_DAY_OF_WEEK))
    if not re.fullmatch(r"[1-5]", nth):
        raise _Invalid("day-of-week", f"{text!r}: the n in day#n must be 1-5")
    return NthWeekday(weekday, int(nth))


def _aws_weekday(value: int) -> int:
    """AWS day-of-week (SUN = 1 … SAT = 7) to Monday = 0 … Sunday = 6."""
    return (value - 2) % 7


def _check_possible(days: DayRule, months: tuple[int, ...]) -> None:
    needed = days.first_day_needed()
    if all(_LONGEST_MONTH[m - 1] < needed for m in months):
        where = _join_ranges(months, _month_word)
        raise _Invalid("day-of-month", f"day {needed} never occurs in {where}: it would never fire")


def _parse_values(text: str, spec: _Spec) -> frozenset[int]:
    values: set[int] = set()
    for item in text.upper().split(","):
        values.update(_parse_item(item, spec))
    return frozenset(values)


def _parse_item(item: str, spec: _Spec) -> range:
    if item == "":
        raise _Invalid(spec.name, "empty value (check the commas)")
    base, slash, step_text = item.partition("/")
    if slash and not spec.steps:
        raise _Invalid(spec.name, f"{item!r}: '/' is not allowed in {spec.name}")
    step = _step(step_text, spec) if slash else 1
    low, high = _bounds(base, spec, stepped=bool(slash))
    return range(low, high + 1, step)


def _step(text: str, spec: _Spec) -> int:
    step = _whole(text)
    if step is None or step < 1:
        raise _Invalid(spec.name, f"step {text!r} must be a whole number of at least 1")
    return step


def _bounds(base: str, spec: _Spec, *, stepped: bool) -> tuple[int, int]:
    if base == "*":
        return spec.low, spec.high
    first, dash, last = base.partition("-")
    low = _value(first, spec)
    if not dash:
        return (low, spec.high) if stepped else (low, low)
    high = _value(last, spec)
    if high < low:
        raise _Invalid(spec.name, f"range {base} runs backwards")
    return low, high


def _value(token: str, spec: _Spec) -> int:
    if token in spec.names:
        return spec.names[token]
    value = _whole(token)
    if value is None:
        raise _Invalid(spec.name, _not_a_value(token, spec))
    if not spec.low <= value <= spec.high:
        raise _Invalid(spec.name, f"{token} is out of range {spec.span()}")
    return value


def _not_a_value(text: str, spec: _Spec) -> str:
    if text == "?":
        return "'?' is only allowed in day-of-month or day-of-week"
    if text in ("L", "W") or "#" in text:
        return f"{text!r} is not allowed here"
    if spec.names:
        first, *_, last = sorted(spec.names, key=spec.names.__getitem__)
        return f"{text!r} is neither a number in range {spec.span()} nor a name {first}-{last}"
    return f"{text!r} is not a number in range {spec.span()}"


def _whole(text: str) -> int | None:
    """``text`` as a non-negative int, or None; absurdly long numbers become 10**9."""
    if not _DIGITS.fullmatch(text):
        return None
    return int(text) if len(text) <= 9 else 10**9


def _sorted(values: frozenset[int]) -> tuple[int, ...]:
    return tuple(sorted(values))


# --------------------------------------------------------------------------- words


def _month_word(month: int) -> str:
    return calendar.month_abbr[month]


def _weekday_word(weekday: int) -> str:
    return _WEEKDAY_WORDS[weekday]


def _join_ranges(values: Iterable[int], word: Callable[[int], str]) -> str:
    """``[1, 2, 3, 5]`` → ``1-3, 5`` (runs of three or more become ranges)."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ", ".join(_run_words(run, word) for run in runs)


def _run_words(run: list[int], word: Callable[[int], str]) -> str:
    if len(run) >= 3:
        return f"{word(run[0])}-{word(run[-1])}"
    return ", ".join(word(v) for v in run)


def _describe_times(minutes: tuple[int, ...], hours: tuple[int, ...]) -> str:
    if len(minutes) * len(hours) <= 4:
        return "at " + ", ".join(f"{h:02d}:{m:02d}" for h in hours for m in minutes)
    every = _every_n_minutes(minutes)
    at = every or (
        "every minute" if len(minutes) == 60 else f"at minute {_join_ranges(minutes, str)}"
    )
    if len(hours) == 24:
        return at if every or len(minutes) == 60 else f"{at} of every hour"
    return f"{at} during hour {_join_ranges(hours, str)}"


def _every_n_minutes(minutes: tuple[int, ...]) -> str | None:
    """``0, 15, 30, 45`` → ``every 15 minutes`` (a step that divides the hour)."""
    if len(minutes) < 2:
        return None
    step = minutes[1] - minutes[0]
    if step < 2 or 60 % step or minutes != tuple(range(minutes[0], 60, step)):
        return None
    if minutes[0] >= step:
        return None
    offset = f" from minute {minutes[0]}" if minutes[0] else ""
    return f"every {step} minutes{offset}"
