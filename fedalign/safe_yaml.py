"""Read a YAML spec file safely: bounded alias expansion, one-line errors, short echoes.

A spec is small. A "billion laughs" file (anchors referring to anchors) is
tiny on disk but expands to billions of values the moment anything walks it
(a type check that echoes the value, json.dumps of the spec). So the composed
node graph is measured *with aliases expanded* before any Python object is
built, and a file whose expansion exceeds `MAX_NODES` is refused. `brief`
shortens any value echoed in an error message.
"""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from pathlib import Path

from fedalign.errors import UsageError

MAX_NODES = 100_000  # values after alias expansion; real specs hold well under 1,000
MAX_BYTES = 1_000_000  # a spec file is hand-written YAML

_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict, _repr.maxlevel = 60, 60, 6, 6, 3


def brief(value) -> str:
    """`repr(value)` cut to about 80 characters, without walking more of it than it shows."""
    text = _repr.repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _expanded_size(root, limit: int) -> int:
    """Node count of the composed graph as if every alias were copied; stops past `limit`."""
    import yaml

    memo: dict[int, int] = {}

    def size(node) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        memo[key] = limit + 1  # a node reached again while being sized is a cycle: too big
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
                if total > limit:
                    break
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        memo[key] = total
        return total

    return size(root)


def load_yaml_mapping(path: str | Path, what: str = "spec file") -> dict:
    """The mapping in a YAML file; every problem is a one-line `UsageError`.

    Refused: a missing path or a directory, unreadable or non-UTF-8 bytes, a
    file over `MAX_BYTES`, invalid YAML, alias expansion over `MAX_NODES`
    values, an empty file, and a top level that is not a mapping.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UsageError(f"{what} {path} is not a file")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as err:
        raise UsageError(f"{what} {path} cannot be read: {err.strerror or err}") from None
    if len(data) > MAX_BYTES:
        raise UsageError(f"{what} {path} is over {MAX_BYTES // 1000} kB; a spec is a short YAML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(
            f"{what} {path} is not UTF-8 text (byte {err.start}); save it as UTF-8"
        ) from None
    raw = load_yaml_text(text, f"{what} {path}")
    if raw is None:
        raise UsageError(f"{what} {path} is empty; see the examples in experiments/")
    if not isinstance(raw, Mapping):
        raise UsageError(
            f"{what} {path} must hold a mapping of keys to values, got {type(raw).__name__}"
        )
    return dict(raw)


def load_yaml_text(text: str, what: str):
    """The value of one YAML document (None if empty), refused as a `UsageError` if invalid or a bomb."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{what} is not valid YAML{at}: {problem}") from None
    if node is None:
        return None
    if _expanded_size(node, MAX_NODES) > MAX_NODES:
        raise UsageError(
            f"{what} expands (through YAML anchors and aliases) to more than "
            f"{MAX_NODES:,} values; write it out without nested aliases"
        )
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:  # e.g. a bad !!tag, found only when constructing
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UsageError(f"{what} is not valid YAML: {problem}") from None
    finally:
        loader.dispose()
