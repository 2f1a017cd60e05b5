"""Value checks for every entry point's settings: each failure is one CharLMError naming the setting.

`knob` declares a setting of a config schema (a dataclass) with its default, one-line doc and range;
`check_knobs` checks a schema object against them. Torch-free: configs are checked before anything
heavy is imported or allocated.
"""

import math
import os
import re
import types
import typing
from dataclasses import field, fields
from pathlib import Path

from charlm.core.errors import CharLMError

MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or float that is finite (NaN and infinities are not numbers a setting can take)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(name: str, value, low: int = 1, high: int | None = None, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not is_int(value) or value < low or (high is not None and value > high):
        if high is not None:
            span = f"an integer from {low} to {high}"
        else:
            span = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise CharLMError(f"{name} must be {span}{' or null' if nullable else ''}, got {value!r}")


def number(name: str, value, low: float, high: float | None = None, low_open: bool = False,
           high_open: bool = False, nullable: bool = False) -> None:
    """A finite number in [low, high] (either end open if asked)."""
    if value is None and nullable:
        return
    ok = is_number(value) and (value > low if low_open else value >= low)
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if not ok:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        span = f"in {left}{low}, {high}{right}" if high is not None else f"{'>' if low_open else '>='} {low}"
        raise CharLMError(f"{name} must be a finite number {span}{' or null' if nullable else ''}, got {value!r}")


def seed(name: str, value, nullable: bool = False) -> None:
    integer(name, value, low=0, high=MAX_SEED, nullable=nullable)


def boolean(name: str, value) -> None:
    if not isinstance(value, bool):
        raise CharLMError(f"{name} must be true or false, got {value!r}")


def choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise CharLMError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def text(name: str, value, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, str) or not value:
        raise CharLMError(f"{name} must be a non-empty string{' or null' if nullable else ''}, got {value!r}")


def folder_name(name: str, value) -> None:
    """Text that becomes part of one folder's name: no path separators."""
    text(name, value)
    if "/" in value or "\\" in value:
        raise CharLMError(f"{name} becomes part of a folder's name, so it cannot hold / or \\, got {value!r}")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which cluster schedulers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_ram() -> int | None:
    """Bytes of RAM this process can still take: the kernel's estimate of what is available, or the
    container's or job's own limit (cgroup) if lower; None where neither can be read."""
    limits = []
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        entries = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        if "MemAvailable" in entries:
            limits.append(int(entries["MemAvailable"].split()[0]) * 1024)
    cgroup = Path("/sys/fs/cgroup/memory.max")
    if cgroup.is_file() and cgroup.read_text().strip().isdigit():
        limits.append(int(cgroup.read_text()))
    return min(limits) if limits else None


def threads(name: str, value) -> None:
    """null, or 1 to the number of usable cores: more threads than cores only makes small models slower."""
    integer(name, value, low=1, high=usable_cores(), nullable=True)


WALL_CLOCK = re.compile(r"^\d+:\d{1,2}:\d{1,2}:\d{1,2}$")


def wall_clock(name: str, value) -> None:
    """null or DD:HH:MM:SS, as Lightning's max_time takes it."""
    if value is not None and not (isinstance(value, str) and WALL_CLOCK.match(value)):
        raise CharLMError(f"{name} must be DD:HH:MM:SS (e.g. 00:01:30:00) or null, got {value!r}")
    if value is not None and not any(int(part) for part in value.split(":")):
        raise CharLMError(f"{name} must be longer than zero, got {value}: the run would train nothing (null: no limit)")


def clock_seconds(value: str) -> int:
    """A DD:HH:MM:SS budget in seconds."""
    days, hours, minutes, seconds = map(int, value.split(":"))
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def knob(default=None, doc: str = "", *, factory=None, **rule):
    """A schema field: its default (or `factory` for a list), a one-line doc and its range rule: `low`,
    `high`, `low_open`, `high_open`, `choices`, or `check` (a function of name and value)."""
    metadata = {"doc": doc, **rule}
    return field(default_factory=factory, metadata=metadata) if factory else field(default=default, metadata=metadata)


def kind_of(annotation) -> tuple[type, bool]:
    """(the type, whether None is allowed) of a field annotated `T` or `T | None`."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    return typing.get_origin(annotation) or annotation, False


def check_knobs(settings, prefix: str = "") -> None:
    """Check each knob of a schema object against its type and rule (one CharLMError naming the first
    bad one, as `prefix + name`); an integer given for a float becomes that float."""
    for spec in fields(settings):
        rule, name, value = spec.metadata, prefix + spec.name, getattr(settings, spec.name)
        kind, nullable = kind_of(spec.type)
        if kind is float and is_int(value):
            value = float(value)
            object.__setattr__(settings, spec.name, value)
        if "check" in rule:
            rule["check"](name, value)
        elif "choices" in rule:
            choice(name, value, rule["choices"])
        elif kind is bool:
            boolean(name, value)
        elif kind is int:
            integer(name, value, rule.get("low", 1), rule.get("high"), nullable)
        elif kind is float:
            number(name, value, rule.get("low", 0), rule.get("high"), rule.get("low_open", False),
                   rule.get("high_open", False), nullable)
        elif kind is str:
            text(name, value, nullable)


def pair(name: str, value) -> None:
    """Two numbers in [0, 1), as Adam's betas."""
    if not (isinstance(value, (list, tuple)) and len(value) == 2):
        raise CharLMError(f"{name} must be two numbers in [0, 1), got {value!r}")
    for i, beta in enumerate(value):
        number(f"{name}[{i}]", beta, 0, 1, high_open=True)
