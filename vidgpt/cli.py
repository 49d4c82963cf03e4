"""Shared pieces of the command-line tools: one-line errors, and flags made from a config dataclass.

A dataclass whose fields carry docstrings (`field: int = 2` followed by `\"\"\"What it is.\"\"\"`) is
declared once and serves both as a TOML section and as command-line flags:

    add_dataclass_options(parser, SamplingSpec)      # --prompt-frames, --steps, --no-kv-cache, ...
    spec = dataclass_from_options(SamplingSpec, parser.parse_args())
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from typing import Any, Literal

from data_pipeline.cli_types import finite_float


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line ('PROG: error: ...') and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (and of the dataclasses it derives from),
    by field name."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if base is not object and dataclasses.is_dataclass(base):
            docs.update(_own_field_docs(base))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    source = textwrap.dedent(inspect.getsource(cls))
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_options(ap: argparse.ArgumentParser, cls: type, inherited: str | None = None) -> None:
    """One flag per field of `cls` (a dataclass with field docstrings): --field-name, with the field's
    docstring as help and its default; a bool field that defaults to true becomes --no-field-name.
    With `inherited` (for example "the dataset's"), non-bool flags default to None and say that the value
    comes from there, else the field's default: `dataclass_from_options(..., base=)` fills them in."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    group = ap.add_argument_group(f"{cls.__name__} ({cls.__module__})")
    for f in dataclasses.fields(cls):
        hint, default = hints[f.name], f.default
        doc = docs.get(f.name, "").replace("%", "%%")  # argparse formats help with %
        if hint is bool:
            if default:
                group.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                   help=f"turn off: {doc}")
            else:
                group.add_argument(_flag(f.name), dest=f.name, action="store_true", help=doc)
            continue
        base = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) in (
            typing.Union, types.UnionType) else [hint]
        kind = base[0]
        kw: dict[str, Any] = {}
        if typing.get_origin(kind) is Literal:
            kw["choices"] = list(typing.get_args(kind))
        else:
            kw["type"] = finite_float if kind is float else kind
        shown = "derived" if default is None else default
        if inherited is not None:
            shown, default = f"{inherited}, else {shown}", None
        group.add_argument(_flag(f.name), dest=f.name, default=default, help=f"{doc} (default: {shown})", **kw)


def dataclass_from_options(cls: type, args: argparse.Namespace, base: Any = None) -> Any:
    """An instance of `cls` from the flags `add_dataclass_options` made (ValueError from its checks); flags
    left at None take `base`'s values (an instance of `cls`) when given."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    if base is not None:
        values = {k: getattr(base, k) if v is None else v for k, v in values.items()}
    return cls(**values)
