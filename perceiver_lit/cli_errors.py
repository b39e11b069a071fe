"""One line for a config error inside a union-typed argument, instead of jsonargparse's dump.

`model` and `data` are `LightningModule | None` (subclass mode), and so are nested class arguments such as the net and
its adapter: a bad value deep inside comes out of jsonargparse as "Does not validate against any of the Union
subtypes", the subtypes, every subtype's error indented under its parents, and the whole value (100+ lines at parse
or instantiation). What the user needs is the field and the cause:

    perceiver-lit: error: model.init_args.net.init_args.adapter: VideoAdapter: input_shape (8, 28, 28, 3) not
    divisible by patch_size (2, 8, 8)

At parse time the field comes from the dump's nested `Parser key "..."` lines; at instantiation from the keys
jsonargparse was instantiating when the constructor raised (its `instantiate` frames), and the cause is the
constructor's own exception (the union error's `__cause__`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from textwrap import dedent
from typing import Any, NoReturn

from lightning.pytorch.cli import LightningArgumentParser

UNION = "Does not validate against any of the Union subtypes"
_KEY = re.compile(r'^Parser key "([^"]+)":$')
_CLASS = re.compile(r"^Problem with given class_path '([^']+)':$")
_NONE = re.compile(r"^- Expected a <class 'NoneType'>")  # the `| None` branch: never what a user who gave a value meant


class ConfigError(ValueError):
    """A config value the CLI refused; the message is one line naming the field and the cause."""


def _leaf(lines: list[str], path: list[str]) -> tuple[list[str], str]:
    """Walk a jsonargparse error text: `Parser key` / `class_path` lines extend the field, a union descends into the
    first subtype's error that is not the None branch, anything else is the cause."""
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
        elif m := _KEY.match(line):
            path.append(m[1])
            i += 1
        elif _CLASS.match(line):
            path.append("init_args")
            i += 1
        elif line == UNION:
            start = next((j for j in range(i, len(lines)) if lines[j].strip() == "Errors:"), None)
            if start is None:
                break
            items: list[list[str]] = []
            indent = None
            for raw in lines[start + 1 :]:
                stripped = raw.lstrip()
                depth = len(raw) - len(stripped)
                if stripped.startswith("- ") and (indent is None or depth == indent):
                    indent = depth
                    items.append([raw])
                elif items and indent is not None and depth > indent:
                    items[-1].append(raw)
                else:
                    break  # "Given value ..." at the list's own level ends it
            if not items:
                break
            pick = next((it for it in items if not _NONE.match(it[0].strip())), items[0])
            first = pick[0].replace("- ", "  ", 1)
            return _leaf(dedent("\n".join([first, *pick[1:]])).splitlines(), path)
        else:
            cause = " ".join(x.strip() for x in lines[i:] if x.strip() and not x.strip().startswith("Given value"))
            return path, cause
    return path, " ".join(x.strip() for x in lines if x.strip())


def _field(path: list[str]) -> str:
    """['model', 'init_args', 'net', ...] -> 'model.init_args.net...'; a class step not followed by a key is dropped."""
    while path and path[-1] == "init_args":
        path = path[:-1]
    return ".".join(path) or "config"


def condense_parse_error(message: str) -> str | None:
    """jsonargparse's parse-time union dump -> 'field: cause'; None for any other message."""
    if UNION not in message:
        return None
    path, cause = _leaf(message.splitlines(), [])
    return f"{_field(path)}: {cause}"


def _instantiate_keys(exc: BaseException) -> list[str]:
    """The keys jsonargparse's `instantiate` was building, outermost first, from the traceback's frames."""
    keys = []
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "instantiate" and "jsonargparse" in code.co_filename:
            key = tb.tb_frame.f_locals.get("key")
            if isinstance(key, str) and (not keys or keys[-1] != key):
                keys.append(key)
        tb = tb.tb_next
    return keys


def condense_instantiation_error(exc: BaseException) -> str | None:
    """A union error raised while instantiating the config -> 'field: cause'; None for anything else."""
    if UNION not in str(exc):
        return None
    keys: list[str] = []
    cause: BaseException = exc
    chain = [exc]
    while UNION in str(cause) and isinstance(cause.__cause__, Exception) and cause.__cause__ not in chain:
        cause = cause.__cause__
        chain.append(cause)
    for e in chain:
        keys += [k for k in _instantiate_keys(e) if not keys or keys[-1] != k]
    path = [part for i, k in enumerate(keys) for part in ((k,) if i == 0 else ("init_args", k))]
    text = str(cause)
    first = text.splitlines()[0].strip() if text else ""
    if UNION in text or _KEY.match(first) or _CLASS.match(first):  # jsonargparse's own wording: walk it
        path, line = _leaf(text.splitlines(), path)
    else:
        line = " ".join(text.split())  # the constructor's own message, on one line
        if not line.startswith(type(cause).__name__) and ":" not in line.split(" ")[0]:
            line = f"{type(cause).__name__}: {line}"
    return f"{_field(path)}: {line}"


@contextmanager
def one_line_config_errors() -> Iterator[None]:
    """Around the CLI's instantiation: a union dump becomes a ConfigError with one line (its cause chained)."""
    try:
        yield
    except ValueError as e:
        line = condense_instantiation_error(e)
        if line is None:
            raise
        raise ConfigError(line) from e


def size_error(error: ValueError, config: Any) -> ConfigError | None:
    """A model size below 1 (models/checks.py SizeError, wrapped by jsonargparse in its union dump) -> one line naming
    the exact config field, found by the owner class and argument name in the config; None for any other error."""
    from perceiver_lit.models.checks import SizeError

    cause: BaseException = error
    while not isinstance(cause, SizeError) and isinstance(cause.__cause__, (ValueError, TypeError)):
        cause = cause.__cause__
    if not isinstance(cause, SizeError):
        return None

    def find(node: Any, path: str) -> str | None:
        if isinstance(node, dict):
            args = node.get("init_args")
            if (
                str(node.get("class_path", "")).rpartition(".")[2] == cause.owner
                and isinstance(args, dict)
                and cause.name in args
            ):
                return f"{path}.init_args.{cause.name}"
            for key, value in node.items():
                found = find(value, f"{path}.{key}" if path else str(key))
                if found:
                    return found
        return None

    tree = config.as_dict() if hasattr(config, "as_dict") else config
    field = find({k: v for k, v in tree.items() if k in ("model", "data")}, "")
    return ConfigError(f"{field} ({cause.owner}): {cause.message}" if field else str(cause))


class OneLineErrorParser(LightningArgumentParser):
    """LightningArgumentParser whose parse errors inside a union come out as one line (no usage, no dump)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        line = condense_parse_error(message)
        if line is None or not self.exit_on_error:
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {line}\n")
        sys.exit(2)


def exit_on_config_error(prog: str, error: ConfigError) -> NoReturn:
    print(f"{prog}: error: {error}", file=sys.stderr)
    sys.exit(2)
