"""Settings declared once: each is a field of a service's frozen settings dataclass, and the
field's declaration (:func:`setting`) holds its default, environment variable, help, parser,
check and whether it is secret. The command-line options, the environment mapping, the
validation and ``docs/settings.md`` are all generated from those fields.

A small layer of our own rather than pydantic-settings: the services already build on
argparse (subcommands, ``--help``) with environment variables as option defaults, which is
a few lines here, and a frozen dataclass stays the one typed object every constructor takes.

Naming: the field keeps the code's unit suffix (``poll_interval_s``); the option spells it
out (``--poll-interval-seconds``) and so does the variable (``..._SECONDS``).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC = "flowscope.setting"
GROUP = "flowscope.settings-group"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Spec:
    """How one setting is given: its option, its variable, how text becomes its value."""

    help: str
    env: str | None  # None: command line only
    flag: str | None  # None: derived from the field name; "": no option (environment only)
    parse: Callable[[str], Any] | None  # text -> value; None: from the default's type
    check: Callable[[Any], str | None] | None  # the value's problem, or None when it is fine
    choices: tuple[str, ...] | None
    secret: bool  # never printed: not in --help, not in the reference
    shown: str | None  # the default as documented, when the value is computed or local
    commands: tuple[str, ...]  # subcommands that take it; (): all of them
    repeat: str | None  # the option repeats; the variable separates items with this
    metavar: str | None


@dataclass(frozen=True)
class Group:
    """A nested settings dataclass whose options share a prefix, e.g. ``--dns-port``."""

    prefix: str
    title: str
    description: str


@dataclass(frozen=True)
class Item:
    """One declared setting, flattened out of its (possibly nested) settings class."""

    name: str  # the field
    path: tuple[str, ...]  # the groups it is nested in, outermost first
    spec: Spec
    default: Any
    flag: str  # "" for an environment-only setting
    dest: str  # the argparse attribute
    group: Group | None

    @property
    def label(self) -> str:
        return "_".join((*self.path, self.name))

    @property
    def where(self) -> str:
        """``--flag, env VAR``: every way to give it, for error messages."""
        parts = [self.flag] if self.flag else []
        if self.spec.env:
            parts.append(f"env {self.spec.env}")
        return ", ".join(parts)

    @property
    def shown_default(self) -> str:
        if self.spec.secret:
            return "(secret)"
        if self.spec.shown is not None:
            return self.spec.shown
        value = self.default
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None or value == "" or value == () or value == frozenset():
            return "none"
        if isinstance(value, (tuple, frozenset)):
            return ",".join(sorted(map(str, value)) if isinstance(value, frozenset) else value)
        return str(value)


def setting(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    env: str | None,
    factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    check: Callable[[Any], str | None] | None = None,
    choices: Sequence[str] | None = None,
    secret: bool = False,
    shown: str | None = None,
    commands: Sequence[str] = (),
    repeat: str | None = None,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is a setting (typed ``Any`` so that it fits any annotation)."""
    spec = Spec(
        help,
        env,
        flag,
        parse,
        check,
        tuple(choices) if choices else None,
        secret,
        shown,
        tuple(commands),
        repeat,
        metavar,
    )
    metadata = {SPEC: spec}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata, repr=not secret)
    return field(default=default, metadata=metadata, repr=not secret)


def group(cls: type, *, prefix: str, title: str, description: str = "") -> Any:
    """A nested settings dataclass; its options are ``--<prefix>-<name>``."""
    return field(default_factory=cls, metadata={GROUP: Group(prefix, title, description)})


# -- parsers and checks ---------------------------------------------------------------------


def parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r}: valid values are true/false, 1/0, yes/no, on/off")


def optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def optional_str(text: str) -> str | None:
    return text or None


def _number(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None

    return parse


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be >= 0 (0 disables), got {value}"


def between(low: float, high: float, what: str = "") -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        if low <= value <= high:
            return None
        return f"{what or f'{low} to {high}'}, got {value}"

    return check


def one_of(valid: Sequence[str]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in valid else f"{value!r}, valid: {', '.join(valid)}"

    return check


def checked(
    parse: Callable[[str], Any], check: Callable[[Any], str | None]
) -> Callable[[str], Any]:
    """A parser that also refuses a value ``check`` finds a problem with: for settings whose
    bad values must stop the command line at once rather than when the object is built."""
    convert = _number(parse) if parse in (int, float) else parse

    def run(text: str) -> Any:
        value = convert(text)
        problem = check(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    run.__name__ = getattr(parse, "__name__", "value")
    return run


def _default_parser(default: Any) -> Callable[[str], Any]:
    if isinstance(default, bool):
        return parse_bool
    if isinstance(default, (int, float)):
        return _number(type(default))
    if isinstance(default, Path):
        return Path
    if isinstance(default, str):
        return str
    raise TypeError(f"a setting whose default is {default!r} needs parse=")


# -- settings shared by every service -------------------------------------------------------


def bootstrap_servers() -> Any:
    return setting(
        "127.0.0.1:9092",
        "Kafka bootstrap servers, host:port[,host:port]",
        env="FLOWSCOPE_BOOTSTRAP_SERVERS",
    )


def topic_prefix() -> Any:
    from flowscope.topics import DEFAULT_PREFIX

    return setting(
        DEFAULT_PREFIX,
        "prefix of every topic name: <prefix>.raw.tcp, ...",
        env="FLOWSCOPE_TOPIC_PREFIX",
    )


def log_level() -> Any:
    return setting(
        "INFO",
        "log level",
        env="FLOWSCOPE_LOG_LEVEL",
        parse=str.upper,
        check=one_of(LOG_LEVELS),
        choices=LOG_LEVELS,
    )


# -- generation -----------------------------------------------------------------------------


def _flag_for(name: str, prefix: str) -> str:
    words = name.split("_")
    if words[-1] == "s":
        words[-1] = "seconds"
    return "--" + "-".join(([prefix] if prefix else []) + words)


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"setting {f.name} has no default")


def items(cls: type, path: tuple[str, ...] = (), grp: Group | None = None) -> Iterator[Item]:
    """Every declared setting of a settings class, nested groups included, in order."""
    for f in dataclasses.fields(cls):
        if GROUP in f.metadata:
            inner: Group = f.metadata[GROUP]
            yield from items(f.default_factory, (*path, f.name), inner)  # type: ignore[arg-type]
            continue
        spec: Spec | None = f.metadata.get(SPEC)
        if spec is None:
            continue  # a value the service derives or that tests set, not a setting
        flag = spec.flag if spec.flag is not None else _flag_for(f.name, grp.prefix if grp else "")
        dest = flag[2:].replace("-", "_") if flag else "_".join((*path, f.name))
        yield Item(f.name, path, spec, _default_of(f), flag, dest, grp)


def env_names(cls: type, *, nested: bool = False) -> dict[str, str]:
    """field name -> environment variable (top level only unless ``nested``)."""
    return {
        i.name if not i.path else i.label: i.spec.env
        for i in items(cls)
        if i.spec.env and (nested or not i.path)
    }


def _type(item: Item) -> Callable[[str], Any]:
    parse = item.spec.parse or _default_parser(item.default)

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"{exc} (from {item.where})") from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def _help(item: Item) -> str:
    where = f"env {item.spec.env}; " if item.spec.env else ""
    text = f"{item.spec.help} ({where}default {item.shown_default})"
    return text.replace("%", "%%")


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    env: Mapping[str, str],
    *,
    command: str | None = None,
) -> None:
    """The options of ``cls``'s settings, their defaults from ``env``. Values from the
    environment are parsed (and refused) like values on the command line."""
    groups: dict[str, Any] = {}
    for item in items(cls):
        if command is not None and item.spec.commands and command not in item.spec.commands:
            continue
        spec = item.spec
        target: Any = parser
        if item.group is not None:
            key = item.group.title
            if key not in groups:
                groups[key] = parser.add_argument_group(item.group.title, item.group.description)
            target = groups[key]
        text = env.get(spec.env) if spec.env else None
        if not item.flag:
            # Environment only (secrets): never an option, so never in `ps` or --help.
            value = _type(item)(text) if text is not None else item.default
            parser.set_defaults(**{item.dest: value})
            continue
        if spec.repeat is not None:
            found = [p for p in (text or "").split(spec.repeat) if p.strip()]
            target.add_argument(
                item.flag,
                dest=item.dest,
                action="append",
                default=found,
                metavar=spec.metavar,
                help=_help(item),
            )
            continue
        kwargs: dict[str, Any] = {}
        if isinstance(item.default, bool):
            kwargs.update(nargs="?", const=True, metavar="BOOL")
        target.add_argument(
            item.flag,
            dest=item.dest,
            # argparse runs `type` over a string default too: the environment is checked.
            default=text if text is not None else item.default,
            type=_type(item),
            choices=spec.choices,
            metavar=spec.metavar or kwargs.pop("metavar", None),
            help=_help(item),
            **kwargs,
        )


def from_args(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """``cls`` built from parsed options; ``values`` (e.g. derived ones) are passed through."""
    return _build(cls, args, (), None, values)


def _build(
    cls: type,
    args: argparse.Namespace,
    path: tuple[str, ...],
    grp: Group | None,
    values: dict[str, Any],
) -> Any:
    by_name = {i.name: i for i in items(cls, path, grp) if i.path == path}
    for f in dataclasses.fields(cls):
        if f.name in values:
            continue
        if GROUP in f.metadata:
            inner = f.default_factory
            values[f.name] = _build(inner, args, (*path, f.name), f.metadata[GROUP], {})  # type: ignore[arg-type]
        elif f.name in by_name and hasattr(args, by_name[f.name].dest):
            item = by_name[f.name]
            value = getattr(args, item.dest)
            if item.spec.repeat is not None:
                value = (item.spec.parse or list)(value)
            values[f.name] = value
    return cls(**values)


def check(obj: Any, error: Callable[[str], Exception]) -> None:
    """Run each declared check of ``obj``'s own settings; the first failure raises
    ``error("<field>: <problem>")``. Called from the settings class's ``__post_init__``."""
    for f in dataclasses.fields(obj):
        spec: Spec | None = f.metadata.get(SPEC)
        if spec is None or spec.check is None:
            continue
        problem = spec.check(getattr(obj, f.name))
        if problem is not None:
            raise error(f"{f.name}: {problem}")


# -- the reference --------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One command's settings in the reference."""

    title: str
    command: str
    cls: type | None
    text: str = ""
    only: tuple[str, ...] = ()  # subcommands shown (their settings, and the shared ones)
    # Or declared as a list of options (consumers.options.Option: flag, env, default, help).
    options: Sequence[Any] = ()


def _cell(text: str) -> str:
    # "<prefix>" would be read as an HTML tag.
    return text.replace("|", "\\|").replace("<", "\\<").replace("\n", " ")


def reference(sections: Sequence[Section], intro: str) -> str:
    """Markdown: per command, a table of option, variable, default and meaning."""
    lines = [intro.rstrip(), ""]
    for section in sections:
        lines += [f"## {section.title}", "", f"`{section.command}`", ""]
        if section.text:
            lines += [section.text, ""]
        lines += ["| option | environment | default | meaning |", "|---|---|---|---|"]
        for o in section.options:
            env = f"`{o.env}`" if o.env else ""
            shown = o.default or "none"
            lines.append(f"| `{o.flag}` | {env} | `{_cell(shown)}` | {_cell(o.help)} |")
        for item in items(section.cls) if section.cls is not None else ():
            used = item.spec.commands
            if section.only and used and not set(used) & set(section.only):
                continue
            meaning = item.spec.help
            flag = f"`{item.flag}`" if item.flag else "(environment only)"
            env = f"`{item.spec.env}`" if item.spec.env else ""
            lines.append(f"| {flag} | {env} | `{_cell(item.shown_default)}` | {_cell(meaning)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
