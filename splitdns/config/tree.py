"""YAML read as a tree of located nodes, so every config error names file, line and key path.

PyYAML's composer keeps a line for every node; plain `yaml.safe_load` throws that away and
silently keeps the last of two duplicate keys. This module keeps both the line and the
strictness, and is the only place that knows about PyYAML nodes.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config problem, printed as `FILE:LINE: key.path: message`."""

    def __init__(self, source: str, line: int, path: str, message: str, excerpt: str = "") -> None:
        self.source = source
        self.line = line
        self.path = path
        self.message = message
        self.excerpt = excerpt  # the offending line with a caret under the mistake
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        head = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        return f"{head}\n{self.excerpt}" if self.excerpt else head


@dataclass(frozen=True)
class Node:
    """One YAML node with where it came from."""

    raw: yaml.Node
    source: str
    path: str

    @property
    def line(self) -> int:
        return int(self.raw.start_mark.line) + 1

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.source, self.line, self.path, message)

    def _child(self, raw: yaml.Node, key: str | int) -> Node:
        if isinstance(key, int):
            path = f"{self.path}[{key}]"
        else:
            path = f"{self.path}.{key}" if self.path else key
        return Node(raw, self.source, path)

    # ---- shapes

    def is_null(self) -> bool:
        return isinstance(self.raw, yaml.ScalarNode) and self.raw.tag.endswith(":null")

    def mapping(self, allowed: set[str] | frozenset[str]) -> dict[str, Node]:
        """The children of a mapping; unknown and duplicate keys are errors."""
        out: dict[str, Node] = {}
        for key, key_node, child in self._pairs():
            if key not in allowed:
                known = ", ".join(sorted(allowed))
                close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.6)
                guess = f"did you mean '{close[0]}'? " if close else ""
                raise Node(key_node, self.source, child.path).error(
                    f"unknown key: {guess}(known keys: {known})"
                )
            out[key] = child
        return out

    def string_mapping(self, *, release: bool = False) -> Iterator[tuple[str, Node]]:
        """Children of a mapping whose keys are free-form strings (host names). `release`:
        each pair is let go of once read, when no alias can reach this mapping from elsewhere
        (a large mapping's hosts are then never held twice, as tree and as model: 100k
        imported entries loaded at a 51 MiB lower peak)."""
        for key, _, child in self._pairs(release=release):
            yield key, child

    def _pairs(self, *, release: bool = False) -> Iterator[tuple[str, yaml.Node, Node]]:
        """(key, key node, child) of a mapping; non-string and duplicate keys are errors."""
        if self.is_null():
            return
        if not isinstance(self.raw, yaml.MappingNode):
            if not self.path:
                raise self.error(
                    f"the file must be a mapping of settings (key: value), not {self.kind()}"
                )
            raise self.error(f"must be a mapping, not {self.kind()}")
        seen: set[str] = set()
        pairs = self.raw.value
        if release and _unshared(self.raw):
            pairs = _released(self.raw)
        for key_node, value_node in pairs:
            try:
                key = _scalar_value(key_node)
            except _UNREADABLE:  # a key YAML cannot type (`=:` is tagged "value")
                shown = getattr(key_node, "value", key_node)
                raise Node(key_node, self.source, self.path).error(
                    f"key {shown!r} must be a string"
                ) from None
            if not isinstance(key, str):
                raise Node(key_node, self.source, self.path).error(f"key {key!r} must be a string")
            child = self._child(value_node, key)
            if key in seen:
                raise Node(key_node, self.source, child.path).error("duplicate key")
            seen.add(key)
            yield key, key_node, child

    def items(self, *, allow_scalar: bool = False) -> list[Node]:
        """The children of a sequence (a lone scalar counts as a list of one if allowed)."""
        if self.is_null():
            return []
        if isinstance(self.raw, yaml.SequenceNode):
            return [self._child(item, i) for i, item in enumerate(self.raw.value)]
        if allow_scalar and isinstance(self.raw, yaml.ScalarNode):
            return [self]
        raise self.error(f"must be a list, not {self.kind()}")

    def scalar(self) -> Any:
        if not isinstance(self.raw, yaml.ScalarNode):
            raise self.error(f"must be a single value, not {self.kind()}")
        try:
            return _scalar_value(self.raw)
        except _UNREADABLE as exc:
            why = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else exc
            raise self.error(f"cannot read {self.raw.value!r} ({self.raw.tag}): {why}") from None

    def text(self) -> str:
        value = self.scalar()
        if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
            raise self.error(f"must be a string, not {value!r}")
        return str(value)

    def number(self, *, minimum: float, maximum: float) -> float:
        value = self.scalar()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"must be a number, not {value!r}")
        if not minimum <= value <= maximum:
            raise self.error(f"must be between {minimum:g} and {maximum:g}, not {value}")
        return float(value)

    def integer(self, *, minimum: int, maximum: int) -> int:
        value = self.scalar()
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"must be a whole number, not {value!r}")
        if not minimum <= value <= maximum:
            raise self.error(f"must be between {minimum} and {maximum}, not {value}")
        return value

    def boolean(self) -> bool:
        value = self.scalar()
        if not isinstance(value, bool):
            raise self.error(f"must be true or false, not {value!r}")
        return value

    def choice(self, options: tuple[str, ...]) -> str:
        value = self.text()
        if value not in options:
            raise self.error(f"must be one of {', '.join(options)}, not {value!r}")
        return value

    def kind(self) -> str:
        if isinstance(self.raw, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.raw, yaml.SequenceNode):
            return "a list"
        try:
            return repr(_scalar_value(self.raw))
        except _UNREADABLE:
            return f"{self.raw.value!r} tagged {self.raw.tag}"


def dynamic_source(node: Node) -> tuple[str, str] | None:
    """`{follow: NAME}` -> ("follow", name) or `{interface: IFACE}` -> ("interface", iface);
    None when the node is a plain value (a literal address)."""
    if not isinstance(node.raw, yaml.MappingNode):
        return None
    keys = node.mapping(frozenset({"follow", "interface"}))
    if len(keys) != 1:
        raise node.error("a dynamic address needs one of 'follow: NAME', 'interface: IFACE'")
    if "interface" in keys:
        iface = keys["interface"].text()
        if not 0 < len(iface) <= 15 or any(c in iface for c in " \"'/;\\"):
            raise keys["interface"].error(f"{iface!r} is not an interface name")
        return "interface", iface
    name = keys["follow"].text().strip().lower().rstrip(".")
    if not name or any(not 0 < len(label) <= 63 for label in name.split(".")):
        raise keys["follow"].error(f"{name!r} is not a valid domain name")
    return "follow", name


# What constructing a scalar can raise: unknown tags (`!foo`), bad `!!binary`, and dates that
# match YAML's timestamp pattern but do not exist (2026-13-45).
_UNREADABLE = (yaml.YAMLError, ValueError, TypeError, OverflowError)


_CONSTRUCTOR = yaml.SafeLoader("")  # one, reused: making a loader per scalar was most of a load


def _scalar_value(node: yaml.Node) -> Any:
    """The typed value of a scalar node, by YAML's safe rules (ints, bools, strings...)."""
    if not isinstance(node, yaml.ScalarNode):
        return f"<{type(node).__name__}>"
    try:
        return _CONSTRUCTOR.construct_object(node, deep=True)
    finally:
        _CONSTRUCTOR.constructed_objects.clear()
        _CONSTRUCTOR.recursive_objects.clear()


#: PyYAML's problems in plain words, and whether the mistake sits at the context mark (the
#: line where the parser started the construct it could not finish) rather than where it gave up.
PLAIN_WORDS: tuple[tuple[str, str, bool], ...] = (
    ("expected <block end>", "this line is indented differently from the lines above it", False),
    ("could not find expected ':'", "a key without its ':' (or an unclosed quote)", True),
    ("mapping values are not allowed here", "a ':' where YAML does not expect one (indent "
     "the line under its key, or quote a value that holds ': ')", False),
    ("found character '\\t'", "a tab: YAML indents with spaces only", False),
    ("found unexpected end of stream", "the file ends inside a quote or a bracket", True),
    ("expected ',' or ']'", "a [list] that is not closed, or a missing ','", True),
    ("expected ',' or '}'", "a {mapping} that is not closed, or a missing ','", True),
    ("expected the node content", "a value is missing (the file ends inside a [list] or "
     "{mapping}?)", False),
    ("found undefined alias", "a '*' that is not an alias: quote the value", False),
    ("expected alphabetic or numeric character", "a '*' or '&' that YAML reads as an alias or "
     "anchor: quote the value (\"*.example.com\")", False),
)  # fmt: skip


def _excerpt(text: str, line: int, column: int) -> str:
    lines = text.splitlines()
    if not 1 <= line <= len(lines):
        return ""
    gutter = f"  {line} | "
    return f"{gutter}{lines[line - 1]}\n{' ' * (len(gutter) + column)}^"


def syntax_error(text: str, source: str, exc: yaml.MarkedYAMLError) -> ConfigError:
    """A YAML syntax error in plain words, on the line of the mistake, with that line shown."""
    problem = str(exc.problem or exc)
    words, at_context = next(
        ((plain, ctx) for known, plain, ctx in PLAIN_WORDS if problem.startswith(known)),
        (problem, False),
    )
    mark = (exc.context_mark if at_context else None) or exc.problem_mark or exc.context_mark
    if mark is None:
        return ConfigError(source, 0, "", f"YAML syntax: {words}")
    line, column = mark.line + 1, mark.column
    if problem.startswith("mapping values are not allowed here"):
        above = _key_without_colon_above(text, line)
        if above is not None:
            line, column = above
            words = "this line has no ':' after its key (`- name: lan`, not `- name lan`)"
    message = f"YAML syntax: {words}" + (f" (YAML says: {problem})" if words != problem else "")
    return ConfigError(source, line, "", message, _excerpt(text, line, column))


def _key_without_colon_above(text: str, line: int) -> tuple[int, int] | None:
    """(line, column) of the nearest non-blank line above `line` when it holds no ':' at all:
    PyYAML reports a missing ':' one line late, at the next key."""
    lines = text.splitlines()
    for number in range(line - 1, 0, -1):
        content = lines[number - 1]
        if not content.strip() or content.strip().startswith("#"):
            continue
        if ":" in content:
            return None
        return number, len(content) - len(content.lstrip(" -"))
    return None


FAST_PARSE = 256 * 1024  # characters beyond which libyaml's parser composes (same nodes, 10x)
_FAST: Any = getattr(yaml, "CSafeLoader", None)


class _Line:
    """Where a node starts: all a Node reads of PyYAML's Mark (name, index, line, column,
    buffer, pointer: two per node, a dict each, most of a large tree's memory)."""

    __slots__ = ("line",)

    def __init__(self, line: int) -> None:
        self.line = line


class _Located:
    """A node's start_mark made when asked, from the line it keeps (mixed into the slotted
    node kinds below, before PyYAML's class)."""

    __slots__ = ()
    line: int
    end_mark = None

    @property
    def start_mark(self) -> _Line:
        return _Line(self.line)


class _Scalar(_Located, yaml.ScalarNode):  # type: ignore[misc]
    __slots__ = ("line", "style", "tag", "value")

    def __init__(self, tag: str, value: str, line: int, style: str | None) -> None:
        self.tag, self.value, self.line, self.style = tag, value, line, style


class _Collection(_Located):
    __slots__ = ()
    tag: str
    value: list[Any]
    flow_style: bool | None

    def __init__(self, tag: str, line: int, flow_style: bool | None) -> None:
        self.tag, self.value, self.line, self.flow_style = tag, [], line, flow_style  # type: ignore[misc]


class _Sequence(_Collection, yaml.SequenceNode):  # type: ignore[misc]
    __slots__ = ("flow_style", "line", "tag", "value")


class _Document:
    """What every mapping of one lean tree knows of the whole: whether any alias was read
    (then any node may be reachable twice, and none is let go of while read)."""

    __slots__ = ("aliased",)

    def __init__(self) -> None:
        self.aliased = False


class _Mapping(_Collection, yaml.MappingNode):  # type: ignore[misc]
    __slots__ = ("document", "flow_style", "line", "tag", "value")
    document: _Document


def _unshared(raw: yaml.Node) -> bool:
    return isinstance(raw, _Mapping) and not raw.document.aliased


def _released(raw: yaml.MappingNode) -> Iterator[tuple[yaml.Node, yaml.Node]]:
    """`raw`'s pairs in order, each gone from it once handed out."""
    pairs = raw.value
    raw.value = []
    pairs.reverse()
    while pairs:
        yield pairs.pop()


_RESOLVER = yaml.resolver.Resolver()


def compose_lean(text: str) -> yaml.Node | None:
    """`yaml.compose(text)` from libyaml's events, the same tree of the same node kinds and
    tags, each node slotted and keeping only its line: a 200,000-entry mapping (an import's)
    composes in about half the memory. Raises what yaml.compose raises."""
    anchors: dict[str, yaml.Node] = {}
    stack: list[yaml.Node] = []
    keys: list[yaml.Node | None] = []
    root: yaml.Node | None = None
    documents = 0
    document = _Document()

    def add(node: yaml.Node) -> None:
        nonlocal root
        if not stack:
            root = node
            return
        parent = stack[-1]
        if isinstance(parent, yaml.MappingNode):
            key = keys[-1]
            if key is None:
                keys[-1] = node
            else:
                parent.value.append((key, node))
                keys[-1] = None
        else:
            parent.value.append(node)

    event: Any
    for event in yaml.parse(text, Loader=_FAST):
        kind = type(event)
        if kind is yaml.ScalarEvent:
            tag = event.tag
            if tag is None or tag == "!":
                tag = _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
            node: yaml.Node = _Scalar(tag, event.value, event.start_mark.line, event.style)
        elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
            mapping = kind is yaml.MappingStartEvent
            tag = event.tag
            if tag is None or tag == "!":
                node_kind = yaml.MappingNode if mapping else yaml.SequenceNode
                tag = _RESOLVER.resolve(node_kind, None, event.implicit)  # type: ignore[no-untyped-call]
            if mapping:
                node = lean = _Mapping(tag, event.start_mark.line, event.flow_style)
                lean.document = document
            else:
                node = _Sequence(tag, event.start_mark.line, event.flow_style)
            if event.anchor is not None:
                anchors[event.anchor] = node
            add(node)
            stack.append(node)
            keys.append(None)
            continue
        elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            stack.pop()
            keys.pop()
            continue
        elif kind is yaml.AliasEvent:
            document.aliased = True
            if event.anchor not in anchors:
                raise yaml.composer.ComposerError(
                    None, None, f"found undefined alias {event.anchor!r}", event.start_mark
                )
            add(anchors[event.anchor])
            continue
        elif kind is yaml.DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise yaml.composer.ComposerError(
                    "expected a single document in the stream", None,
                    "but found another document", event.start_mark,
                )  # fmt: skip
            continue
        else:
            continue
        if event.anchor is not None:
            anchors[event.anchor] = node
        add(node)
    return root


def parse(text: str, source: str) -> Node:
    """Compose YAML text into a located node; syntax errors become ConfigError."""
    try:
        raw = None
        if len(text) > FAST_PARSE and _FAST is not None:  # (a generated mapping: import's)
            try:
                raw = compose_lean(text)
            except yaml.YAMLError:
                raw = None  # the pure parser says what is wrong, in its words
        if raw is None:
            raw = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise syntax_error(text, source, exc) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(source, 0, "", f"YAML: {exc}") from exc
    if raw is None:
        raw = yaml.compose("~", Loader=yaml.SafeLoader)
        assert raw is not None
    return Node(raw, source, "")
