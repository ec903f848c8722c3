"""Settings from environment variables, read one way by every process (gateway, sync, serving
launcher and local server, export).

A settings class is a frozen dataclass deriving from `EnvSettings`; each field names its variable
with `env(...)` and has a one-line docstring below it; `from_env()` reads them once, in main().
One dialect everywhere: booleans are true/false, 1/0, yes/no or on/off in any case; a variable
set to an empty string counts as unset; a bad value raises `SettingsError`, which names the
variable and what it accepts, and which a main() turns into one line and exit status 78
(`exit_on_error`). Standard library only: the gateway imports it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

EX_CONFIG = 78
"""sysexits.h: a configuration error (sync's EX_CONFIG too); supervisord logs the exit status."""

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})

T = TypeVar("T")


class SettingsError(ValueError):
    """A variable holds a value its setting does not accept (or settings that cannot combine)."""

    exit_code = EX_CONFIG

    def __init__(self, message: str, variable: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.variable = variable


@dataclass(frozen=True)
class Parser:
    """Turns a variable's text into a field's value; `convert` raises ValueError otherwise."""

    accepted: str
    """What the variable accepts, as the error message says it."""
    convert: Callable[[str], Any]


def _bool(text: str) -> bool:
    word = text.lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(text)


def _at_least(convert: Callable[[str], T], minimum: float | None) -> Callable[[str], T]:
    def checked(text: str) -> T:
        value = convert(text)
        if minimum is not None and value < minimum:  # type: ignore[operator]
            raise ValueError(text)
        return value

    return checked


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


BOOLEAN = Parser("true/false, 1/0, yes/no or on/off (any case)", _bool)
TEXT = Parser("text", str)
PATH = Parser("a path", Path)
ITEMS = Parser("a comma-separated list", _items)


def integer(minimum: int | None = None) -> Parser:
    """Whole numbers, optionally at least `minimum`."""
    bound = "" if minimum is None else f" >= {minimum}"
    return Parser(f"an integer{bound}", _at_least(int, minimum))


def number(minimum: float | None = None) -> Parser:
    """Decimal numbers, optionally at least `minimum`."""
    bound = "" if minimum is None else f" >= {minimum:g}"
    return Parser(f"a number{bound}", _at_least(float, minimum))


def _default_parser(default: object) -> Parser:
    if isinstance(default, bool):
        return BOOLEAN
    if isinstance(default, int):
        return integer()
    if isinstance(default, float):
        return number()
    if isinstance(default, Path):
        return PATH
    if isinstance(default, tuple):
        return ITEMS
    if isinstance(default, str):
        return TEXT
    raise TypeError(f"no parser for a default of {type(default).__name__}: pass one")


def env(
    names: str | tuple[str, ...],
    default: T,
    parser: Parser | None = None,
    *,
    keep_blank: bool = False,
    derive: Callable[[Mapping[str, Any]], T] | None = None,
    secret: bool = False,
) -> T:
    """A field read from the first set variable of `names` (later ones are fallbacks).

    `parser` defaults to one for the default's type. `keep_blank`: an empty value is parsed
    (e.g. "no flags file") instead of meaning unset. `derive`: the default when no variable is
    set, from the fields read before it (e.g. a file under the base path). `secret`: kept out
    of repr().
    """
    variables = (names,) if isinstance(names, str) else names
    meta = {
        "env": variables,
        "parser": parser or _default_parser(default),
        "keep_blank": keep_blank,
        "derive": derive,
    }
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


def _read(variables: tuple[str, ...], meta: Mapping[str, Any], environ: Mapping[str, str]) -> Any:
    """The parsed value of the first variable set, or `_MISSING`."""
    for name in variables:
        raw = environ.get(name)
        if raw is None or (not raw.strip() and not meta["keep_blank"]):
            continue
        parser: Parser = meta["parser"]
        try:
            return parser.convert(raw.strip())
        except ValueError:
            raise SettingsError(f"{name}={raw!r}: expected {parser.accepted}", name) from None
    return _MISSING


_MISSING = object()


class EnvSettings:
    """Base of each process's settings dataclass: `from_env` fills the `env(...)` fields."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Read every `env(...)` field from `environ` (default: os.environ), then `validate`."""
        source = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if "env" not in f.metadata:
                continue
            value = _read(f.metadata["env"], f.metadata, source)
            if value is not _MISSING:
                values[f.name] = value
            elif f.metadata["derive"] is not None:
                defaults = {g.name: g.default for g in dataclasses.fields(cls)}  # type: ignore[arg-type]
                values[f.name] = f.metadata["derive"]({**defaults, **values})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject values that are each fine but cannot work together; name the variable."""

    @classmethod
    def variables(cls) -> dict[str, tuple[str, ...]]:
        """Field name -> the variables it reads, first one first (the README documents them)."""
        return {
            f.name: f.metadata["env"]
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if "env" in f.metadata
        }


@contextmanager
def exit_on_error(program: str) -> Iterator[None]:
    """In a main(): a SettingsError becomes one line on stderr and exit status EX_CONFIG, not a
    traceback under supervisord."""
    try:
        yield
    except SettingsError as exc:
        print(f"{program}: configuration error: {exc.message}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
