"""One command-line style for every command and benchmark: its arguments are a dataclass parsed by draccus, like the
run config.

draccus reads ``--field value`` with Python field names. ``parse`` first rewrites the spellings our
commands document into that form: ``--seq-len`` for ``--seq_len``, a command's aliases (``--data NAME``
for the protocol's ``--corpus``), a bare switch (``--skip-train``) for ``--skip_train true``, the values
after a list field (``--hf gpt2 smollm2``) as one list, and positional arguments as the one field that
takes them (``compare RUN RUN``: ``runs``). Every error comes out as a ``ConfigError`` of one line.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import TypeVar

import draccus
from draccus.utils import DraccusException

from chimera_jax.config import ConfigError, one_line

T = TypeVar("T")


def normalise(arg: str) -> str:
    """``--seq-len`` -> ``--seq_len`` (``--train.batch-size=8`` -> ``--train.batch_size=8``); values unchanged."""
    if not arg.startswith("--"):
        return arg
    name, eq, value = arg[2:].partition("=")
    return "--" + name.replace("-", "_") + eq + value


def _kind(annotation) -> str:
    """``"switch"`` for a bool field, ``"list"`` for a list field (optional or not), else ``"value"``."""
    if annotation is bool:
        return "switch"
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = typing.get_args(annotation) if union else (annotation,)
    return "list" if any(typing.get_origin(o) is list for o in options) else "value"


def _is_flag(arg: str) -> bool:
    return arg.startswith("--")


def parse_known(cls: type[T], argv: Sequence[str], *, positional: str | None = None,
                aliases: Mapping[str, str] | None = None) -> tuple[T, list[str]]:
    """Parse the flags naming fields of ``cls``; the others, with their values, are returned for another parser."""
    kinds = {name: _kind(hint) for name, hint in typing.get_type_hints(cls).items()}
    args = ["--help" if a == "-h" else normalise(a) for a in argv]
    known: list[str] = []
    rest: list[str] = []
    positionals: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not _is_flag(arg):
            positionals.append(arg)
            continue
        name, eq, value = arg[2:].partition("=")
        name = (aliases or {}).get(name, name)
        kind = kinds.get(name)
        if arg == "--help":
            known.append(arg)
        elif eq:  # --name=value: one value, a list of one for a list field
            (known if kind else rest).extend([f"--{name}", json.dumps([value]) if kind == "list" else value])
        elif kind == "switch" and (i == len(args) or _is_flag(args[i])):
            known.extend([f"--{name}", "true"])
        elif kind == "list":
            values = []
            while i < len(args) and not _is_flag(args[i]):
                values.append(args[i])
                i += 1
            known.extend([f"--{name}", json.dumps(values)])
        else:  # the value follows (a missing one is draccus's error to report)
            taken = args[i : i + 1] if i < len(args) and not _is_flag(args[i]) else []
            i += len(taken)
            (known if kind else rest).extend([f"--{name}", *taken])
    if positionals:
        if positional is None:
            raise ConfigError(f"unexpected argument(s): {' '.join(positionals)}")
        if kinds[positional] != "list" and len(positionals) > 1:
            raise ConfigError(f"one {positional} expected, got {len(positionals)}: {' '.join(positionals)}")
        known.extend([f"--{positional}", json.dumps(positionals) if kinds[positional] == "list" else positionals[0]])
    try:
        return draccus.parse(cls, args=known, exit_on_error=False), rest
    except (DraccusException, argparse.ArgumentError) as err:
        raise ConfigError(one_line(err)) from err


def parse(cls: type[T], argv: Sequence[str], *, positional: str | None = None,
          aliases: Mapping[str, str] | None = None) -> T:
    """``cls`` from the command line; any flag that is not one of its fields is an error."""
    args, rest = parse_known(cls, argv, positional=positional, aliases=aliases)
    if rest:
        raise ConfigError(f"unrecognized arguments: {' '.join(rest)}")
    return args
