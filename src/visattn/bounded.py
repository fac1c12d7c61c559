"""Reading files that anyone may have written (recipes, a run's files, a downloaded config.json, a
comparison's records, ``@LIST`` files) within bounds, so that a small malicious or broken file
costs neither much memory nor much time.

- :func:`read_text` refuses a file larger than its limit before reading it.
- :func:`load_yaml` / :func:`read_yaml`: plain YAML data (PyYAML's safe loader, on libyaml where
  PyYAML has it) without aliases, whose expansion turns a kilobyte into gigabytes, and without a
  key given twice in one mapping (the error names the key and both lines).
- :func:`read_json`: a JSON file within a size limit.
- Nesting deeper than the parsers' recursion is an error, not a ``RecursionError``.
- :func:`shorten`: the ``repr`` of a value cut to a length, for error messages that quote input.

Every problem is an :class:`UnreadableFileError` (a ``ValueError``) naming the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

__all__ = ["UnreadableFileError", "MAX_CONFIG_BYTES", "MAX_RECORD_BYTES", "MAX_LOG_BYTES", "MAX_CLASSES", "read_text",
           "load_yaml", "read_yaml", "read_json", "yaml_problem", "shorten"]

MAX_CONFIG_BYTES = 1 << 20  # a recipe, a run's config.yaml, compare.yaml, config.json
MAX_RECORD_BYTES = 16 << 20  # final.json, class_weights.json (a confusion matrix of a thousand classes)
MAX_LOG_BYTES = 256 << 20  # metrics.jsonl (a million log lines)
# The most classes a config or a config.json may name: more than any dataset has, and a bound on the
# classifier a file can make us build (10**12 classes would allocate until memory runs out).
MAX_CLASSES = 100_000


class UnreadableFileError(ValueError):
    """A file that is too large, not valid YAML or JSON, or holds YAML that is refused; the message names it."""


def shorten(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters (the middle replaced by ``...``)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]} ({len(text)} characters)"


def read_text(path: str | os.PathLike, limit: int = MAX_CONFIG_BYTES) -> str:
    """The text of ``path``, refused unread when it holds more than ``limit`` bytes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > limit:
            raise UnreadableFileError(f"{path} is too large to be read ({size} bytes; at most {limit})")
        with path.open("rb") as f:
            data = f.read(limit + 1)  # a file growing meanwhile is cut at the limit, then refused
    except OSError as err:
        raise UnreadableFileError(f"{path} cannot be read: {err.strerror or err}") from None
    if len(data) > limit:
        raise UnreadableFileError(f"{path} is too large to be read (more than {limit} bytes)")
    try:
        return data.decode()
    except UnicodeDecodeError as err:
        raise UnreadableFileError(f"{path} is not UTF-8 text (byte {err.start})") from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's complaint and where, on one line: ``line 3, column 7: mapping values are not allowed here``."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


class _PlainLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser where PyYAML has it: 7x faster
    """PyYAML's safe loader refusing keys given twice in a mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {shorten(key)} is given twice (lines {lines[key]} and {line})",
                        key_node.start_mark)
                lines[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str, origin: str) -> Any:
    """The plain data of the YAML ``text`` (no aliases, no key twice); ``origin`` names where it comes
    from in the error."""
    try:
        for event in yaml.parse(text, Loader=_PlainLoader):  # aliases refused before anything is built
            if isinstance(event, yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, f"an alias (*{event.anchor}) is not allowed: write the "
                                                  "value out", event.start_mark)
        return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.scanner.ScannerError, yaml.parser.ParserError) as err:
        err = _python_parser_error(text) or err
        raise UnreadableFileError(f"{origin} is not valid YAML: {yaml_problem(err)}") from None
    except yaml.YAMLError as err:
        raise UnreadableFileError(f"{origin} is not valid YAML: {yaml_problem(err)}") from None
    except RecursionError:
        raise UnreadableFileError(f"{origin} is not valid YAML: nested too deeply") from None


def _python_parser_error(text: str) -> yaml.YAMLError | None:
    """The complaint of PyYAML's pure-Python parser about ``text``, which says what it expected where
    libyaml's does not; asked of texts up to 64 KiB (it is several times slower), and nothing built."""
    if len(text) > 1 << 16:
        return None
    try:
        for _ in yaml.parse(text, Loader=yaml.SafeLoader):
            pass
    except yaml.YAMLError as err:
        return err
    return None


def read_yaml(path: str | os.PathLike, limit: int = MAX_CONFIG_BYTES) -> Any:
    """:func:`load_yaml` of the file ``path``, refused when larger than ``limit`` bytes."""
    return load_yaml(read_text(path, limit), f"{path}")


def read_json(path: str | os.PathLike, limit: int = MAX_RECORD_BYTES) -> Any:
    """The JSON data of the file ``path``, refused when larger than ``limit`` bytes."""
    text = read_text(path, limit)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UnreadableFileError(f"{path} is not valid JSON: {err}") from None
    except RecursionError:
        raise UnreadableFileError(f"{path} is not valid JSON: nested too deeply") from None
