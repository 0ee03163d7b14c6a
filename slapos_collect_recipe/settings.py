"""One resolver for the settings of every command and of the buildout recipe.

A setting is declared once, as a ``Setting``: its INI key and sections, its
kind (the parser of its text), its default, its flag with metavar and help.
Commands generate their flags from the declarations (``add_flags``) and
resolve them all the same way (``resolve``): the flag, else the INI file of
``-c CONFIG`` (its sections in the declared order), else what a node's
slapos.cfg says, else the default. A repeatable setting (``many``) either
adds its flags to the file's entries (``"add"``) or replaces them
(``"replace"``). The recipe reads its buildout options with the same kinds
(``from_options``).

Kinds are plain functions of the raw text that raise ``ValueError("must be
...")``; the resolver names where the bad value came from (``--flag``,
``[section] key``, ``option key``) in a ``SettingError``, which the CLI prints
as its one line and the recipe turns into ``zc.buildout.UserError``.
Buildout imports this module: it imports nothing heavy.
"""

from __future__ import annotations

import argparse
import configparser
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import CollectError

COLLECT = "slapos-collect"  # the main INI section
DEFAULT_DATA_DIR = "var/data-log"
TRUE = ("1", "yes", "true", "on")
FALSE = ("0", "no", "false", "off")

Kind = Callable[[str], Any]


class SettingError(CollectError):
    """A bad setting, named by where it came from: one line for the user."""


# -- kinds: raw text -> value, or ValueError("must be ...") ------------------------------


def text(raw: str) -> str:
    return raw.strip()


def boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"must be yes or no, not {raw.strip()!r}")


def _shown(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check_bounds(value: float, low: float | None, high: float | None, above: float | None, unit: str,
                  low_reason: str, high_reason: str) -> None:
    """Out of bounds (or not finite): ValueError naming the bounds; a bound with a reason is named alone."""
    too_low = (low is not None and not value >= low) or (above is not None and not value > above)
    too_high = high is not None and not value <= high
    if math.isfinite(value) and not too_low and not too_high:
        return
    u = f" {unit}" if unit else ""
    if too_low and low_reason:
        bound = f"at least {_shown(low)}{u} ({low_reason})"
    elif too_high and high_reason:
        bound = f"at most {_shown(high)}{u} ({high_reason})"
    elif not too_low and not too_high:
        bound = "a finite number"
    elif above is not None:
        bound = f"above {_shown(above)}{u}"
    elif low is not None and high is not None:
        bound = f"between {_shown(low)} and {_shown(high)}{u}"
    elif low is not None:
        bound = f"at least {_shown(low)}{u}"
    else:
        bound = f"at most {_shown(high)}{u}"
    raise ValueError(f"must be {bound}, not {_shown(value)}")


def _numeric(convert: Callable[[str], float], what: str, low: float | None, high: float | None, above: float | None,
             unit: str, low_reason: str, high_reason: str) -> Kind:
    def parse(raw: str) -> float:
        try:
            value = convert(raw.strip())
        except ValueError:
            of = f" of {unit}" if unit else ""
            raise ValueError(f"must be {what}{of}, not {raw.strip()!r}") from None
        _check_bounds(value, low, high, above, unit, low_reason, high_reason)
        return value
    return parse


def integer(low: int | None = None, high: int | None = None, *, unit: str = "", low_reason: str = "",
            high_reason: str = "") -> Kind:
    """A whole number within [low, high]."""
    return _numeric(int, "a whole number", low, high, None, unit, low_reason, high_reason)


def number(low: float | None = None, high: float | None = None, *, above: float | None = None,
           unit: str = "") -> Kind:
    """A finite decimal number within [low, high] (or above ``above``)."""
    return _numeric(float, "a number", low, high, above, unit, "", "")


def choice(*values: str, fold_case: bool = False) -> Kind:
    """One of ``values`` (a flag gets them as argparse choices)."""
    if len(values) <= 3:
        alternatives = f"{', '.join(values[:-1])} or {values[-1]}"
    else:
        alternatives = f"one of {', '.join(values[:-1])} or {values[-1]}"

    def parse(raw: str) -> str:
        value = raw.strip()
        if (value.lower() if fold_case else value) in values:
            return value.lower() if fold_case else value
        raise ValueError(f"must be {alternatives}, not {value!r}")
    parse.choices = values  # type: ignore[attr-defined]
    return parse


def iso_day(raw: str) -> int:
    """A YYYY-MM-DD day, as a day number since the epoch."""
    import datetime  # this kind and ip_address import lazily: collect, every minute, needs neither

    value = raw.strip()
    try:
        parsed = datetime.date.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or len(value) != 10:
        raise ValueError(f"must be a day as YYYY-MM-DD, not {value!r}")
    return (parsed - datetime.date(1970, 1, 1)).days


def absolute_path(raw: str) -> str:
    path = raw.strip()
    if not os.path.isabs(path):
        raise ValueError(f"must be an absolute path, not {path!r}")
    return path


class ItemError(ValueError):
    """One entry of a list is bad: reported as ``<where>: 'entry' <why>``."""


def words(item: Kind | None = None) -> Kind:
    """Whitespace-separated entries, each checked by ``item``."""
    def parse(raw: str) -> list:
        return [_item(item, w) for w in raw.split()]
    return parse


def lines(item: Kind | None = None) -> Kind:
    """One entry per non-empty line, each checked by ``item``."""
    def parse(raw: str) -> list:
        return [_item(item, line.strip()) for line in raw.splitlines() if line.strip()]
    return parse


def _item(item: Kind | None, entry: str) -> Any:
    if item is None:
        return entry
    try:
        return item(entry)
    except ValueError as exc:
        raise ItemError(f"{entry!r} {exc}") from None


def ip_address(raw: str) -> str:
    """An IPv4 or IPv6 address as ``inet_pton`` takes it (no ``%zone``: it cannot be in a URL)."""
    from .address import normal_address

    if normal_address(raw) is None:
        raise ValueError("is not an IP address")
    return raw


def label_and_path(shown: str) -> Kind:
    """``LABEL=/absolute/path`` (spaces allowed around ``=``), kept as written."""
    def parse(raw: str) -> str:
        label, sep, path = raw.partition("=")
        if not sep or not label.strip() or not os.path.isabs(path.strip()):
            raise ValueError(f"must be {shown}")
        return raw
    return parse


# -- declarations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: where it is read, how it is parsed, what it is when nowhere given.

    ``key`` is the INI key (and the node value's or the buildout option's);
    ``flag`` its option strings, if it has a flag; ``switch`` makes the flag
    take no value and give this one; ``many`` makes the flag repeatable (see
    the module's docstring); ``required`` refuses a missing value.
    """

    key: str
    kind: Kind = text
    default: Any = None
    sections: tuple[str, ...] = ()
    flag: str | tuple[str, ...] | None = None
    help: str | None = None
    metavar: str | None = None
    many: str = ""
    switch: Any = None
    dest: str = ""
    group: str = ""  # an argparse argument group's title
    exclusive: str = ""  # a mutually exclusive group's name
    required: bool = False

    @property
    def flags(self) -> tuple[str, ...]:
        return (self.flag,) if isinstance(self.flag, str) else tuple(self.flag or ())

    @property
    def option(self) -> str:
        """The flag as errors name it (its long form)."""
        return next((f for f in self.flags if f.startswith("--")), self.flags[0] if self.flags else self.key)

    @property
    def attribute(self) -> str:
        """The argparse destination."""
        return self.dest or self.option.lstrip("-").replace("-", "_")


def add_flags(parser: argparse.ArgumentParser, declared: Iterable[Setting]) -> None:
    """The flags of ``declared``, in order; the INI-only ones are skipped."""
    groups: dict[tuple[str, str], Any] = {}
    for setting in declared:
        if not setting.flags:
            continue
        target: Any = parser
        if setting.group:
            if ("group", setting.group) not in groups:
                groups["group", setting.group] = parser.add_argument_group(setting.group)
            target = groups["group", setting.group]
        if setting.exclusive:
            if ("exclusive", setting.exclusive) not in groups:
                groups["exclusive", setting.exclusive] = target.add_mutually_exclusive_group()
            target = groups["exclusive", setting.exclusive]
        options: dict[str, Any] = {"dest": setting.attribute, "help": setting.help, "default": None}
        if setting.required:
            options["required"] = True
        if setting.switch is not None:
            options.update(action="store_const", const=setting.switch)
        else:
            options["metavar"] = setting.metavar
            if setting.many:
                options["action"] = "append"
            choices = getattr(setting.kind, "choices", None)
            if choices:
                options["choices"] = choices
        target.add_argument(*setting.flags, **options)


# -- sources -------------------------------------------------------------------------------


def read_ini(path: str | os.PathLike) -> configparser.ConfigParser:
    """Read an INI file, turning every failure into one clear CollectError."""
    # " ; comment" after a value is a comment (as in the README's examples);
    # a ";" with no space before it stays part of the value.
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise CollectError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CollectError(f"cannot read config file {path}: {exc}") from None
    except configparser.Error as exc:
        message = str(exc).replace("\n", " ")
        raise CollectError(f"malformed config file {path}: {message}") from None
    return parser


def load_config(args: argparse.Namespace) -> configparser.ConfigParser:
    """The ``-c`` file, or an empty parser when none was given."""
    path = _given(args, CONFIG)
    if path:
        return read_ini(path)
    return configparser.ConfigParser(interpolation=None)


def parse(setting: Setting, raw: str, origin: str) -> Any:
    """``raw`` read as ``setting``'s kind; a bad value is a SettingError naming ``origin``."""
    try:
        return setting.kind(raw)
    except ItemError as exc:
        raise SettingError(f"{origin}: {exc}") from None
    except ValueError as exc:
        raise SettingError(f"{origin} {exc}") from None


def ini_value(ini: configparser.ConfigParser, section: str, setting: Setting, default: Any = None) -> Any:
    """One key of one section (blank counts as missing)."""
    raw = ini.get(section, setting.key, fallback="")
    if not raw.strip():
        return default
    return parse(setting, raw, f"[{section}] {setting.key}")


@dataclass
class Resolved:
    """Values by key, and where each came from (``--flag``, ``[section] key``, ``slapos.cfg``, ``default``)."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def given(self, key: str) -> bool:
        """True when the value was set somewhere (not the default)."""
        return self.origins[key] != "default"


def resolve(declared: Iterable[Setting], args: argparse.Namespace | None = None,
            ini: configparser.ConfigParser | None = None, node: Mapping[str, Any] | None = None) -> Resolved:
    """Each setting from its flag, else the INI file, else the node's (typed) values, else its default.

    ``args`` may lack the attributes of flags its command does not offer."""
    resolved = Resolved()
    for setting in declared:
        value, origin = _resolve(setting, args, ini, node or {})
        if setting.required and value is None:
            raise SettingError(f"{setting.option} is required")
        resolved.values[setting.key], resolved.origins[setting.key] = value, origin
    return resolved


def _given(args: argparse.Namespace | None, setting: Setting) -> Any:
    """The flag's value, None when not given (or not offered by this command)."""
    if args is None or not setting.flags:
        return None
    return getattr(args, setting.attribute, None)


def _resolve(setting: Setting, args: argparse.Namespace | None, ini: configparser.ConfigParser | None,
             node: Mapping[str, Any]) -> tuple[Any, str]:
    given = _given(args, setting)
    flagged: list = []
    if setting.switch is not None:
        if given is not None:
            return given, setting.option
    elif setting.many:
        flagged = [str(v).strip() for v in given or () if str(v).strip()]
        if flagged and setting.many == "replace":
            return flagged, setting.option
    elif given is not None and str(given).strip():
        return parse(setting, str(given), setting.option), setting.option
    for section in setting.sections if ini is not None else ():
        value = ini_value(ini, section, setting)
        if value is not None:
            return (value + flagged if flagged else value), f"[{section}] {setting.key}"
    if flagged:
        return flagged, setting.option
    if node.get(setting.key) is not None:
        return node[setting.key], "slapos.cfg"
    if setting.many and setting.default is None:
        return [], "default"
    return setting.default, "default"


def from_options(setting: Setting, options: Mapping[str, str], default: Any = None) -> Any:
    """A buildout option read as ``setting`` (``option <key>`` in errors); blank or missing: the default."""
    raw = options.get(setting.key, "")
    if raw.strip():
        return parse(setting, raw, f"option {setting.key}")
    if setting.required:
        raise SettingError(f"option {setting.key} is required")
    return setting.default if default is None else default


# -- settings several commands share ------------------------------------------------------

CONFIG = Setting("config", flag=("-c", "--config"), metavar="CONFIG", help="INI configuration file")
DATA_DIR = Setting("data-dir", default=DEFAULT_DATA_DIR, sections=(COLLECT,), flag="--data-dir", metavar="DIR",
                   help="where collector.db, the CSVs and the dumps live")
LOG_FILE = Setting("log-file", sections=(COLLECT,), flag="--log-file", metavar="FILE",
                   help="log to FILE (default: warnings on stderr)")
