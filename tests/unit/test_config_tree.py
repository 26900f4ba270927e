"""config/tree.py's lean composer for large files (an import's 200,000-entry mapping): the
tree it builds is yaml.compose's, node for node (kinds, tags, values, styles, lines), and it
refuses what yaml.compose refuses."""

from __future__ import annotations

import pytest
import yaml

from splitdns.config import model
from splitdns.config.tree import FAST_PARSE, Node, compose_lean

TEXTS = [
    "a: &x [1, 2, {b: c}]\nd: *x\ne: !!str 5\nf: ~\ng: yes\nh: 'quoted'\ni: |\n  block\n",
    "- 1\n- [a, b]\n- {x: 1.5, y: [null, true]}\n- !!binary aGk=\n",
    "views:\n  - name: lan\n    hosts:\n"
    + "".join(f"      h{i}.example.test: 192.0.2.{i % 250 + 1}  # note\n" for i in range(3000)),
]


def same(lean: yaml.Node, full: yaml.Node) -> None:
    assert lean.tag == full.tag and lean.start_mark.line == full.start_mark.line
    if isinstance(full, yaml.ScalarNode):
        assert isinstance(lean, yaml.ScalarNode)
        assert (lean.value, lean.style) == (full.value, full.style)
    elif isinstance(full, yaml.MappingNode):
        assert isinstance(lean, yaml.MappingNode) and not isinstance(lean, yaml.SequenceNode)
        assert len(lean.value) == len(full.value)
        for (k1, v1), (k2, v2) in zip(lean.value, full.value, strict=True):
            same(k1, k2)
            same(v1, v2)
    else:
        assert isinstance(lean, yaml.SequenceNode) and not isinstance(lean, yaml.MappingNode)
        assert len(lean.value) == len(full.value)
        for x, y in zip(lean.value, full.value, strict=True):
            same(x, y)


@pytest.mark.parametrize("text", TEXTS, ids=["anchors-tags", "sequence", "hosts"])
def test_the_lean_tree_is_yaml_composes(text: str) -> None:
    lean = compose_lean(text)
    assert lean is not None
    same(lean, yaml.compose(text, Loader=yaml.CSafeLoader))  # (what it stands in for)


@pytest.mark.parametrize("bad", ["a: *nope\n", "a: 1\n---\nb: 2\n", "a: [1, 2\n", "a: b: c\n"])
def test_the_lean_composer_refuses_what_yaml_refuses(bad: str) -> None:
    with pytest.raises(yaml.YAMLError):
        yaml.compose(bad, Loader=yaml.SafeLoader)
    with pytest.raises(yaml.YAMLError):
        compose_lean(bad)


def test_a_large_file_loads_through_it_with_lines_in_errors() -> None:
    """Past FAST_PARSE characters a config goes through the lean composer; an error still
    names its line."""
    hosts = "".join(f"      h{i}.example.test: 192.0.2.{i % 250 + 1}\n" for i in range(12000))
    text = "views:\n  - name: lan\n    clients: [192.0.2.0/24]\n    hosts:\n" + hosts
    assert len(text) > FAST_PARSE
    assert len(model.loads(text, "big.yaml").views[0].hosts) == 12000
    broken = text + "      bad.example.test: not-an-address\n"
    with pytest.raises(model.ConfigError, match=r"big\.yaml:12005: .*bad\.example\.test"):
        model.loads(broken, "big.yaml")


def _big_hosts(count: int) -> str:
    return "".join(f"      h{i}.example.test: 192.0.2.{i % 250 + 1}\n" for i in range(count))


def test_hosts_are_let_go_of_as_read_and_kept_in_order() -> None:
    """The hosts mapping of a lean tree is emptied as the model reads it (held once, not as
    tree and model at once), and the model has every entry in the file's order (PTR answers
    give the first name listed for an address)."""
    text = "views:\n  - name: lan\n    clients: [192.0.2.0/24]\n    hosts:\n" + _big_hosts(12000)
    root = compose_lean(text)
    assert root is not None
    hosts_node = root.value[0][1].value[0].value[2][1]
    assert len(hosts_node.value) == 12000
    config = model.from_node(Node(root, "big.yaml", ""))
    assert hosts_node.value == []  # (nothing of it left in the tree)
    exact = config.views[0].hosts.exact
    assert list(exact)[:3] == ["h0.example.test", "h1.example.test", "h2.example.test"]
    assert len(exact) == 12000
    address = next(iter(exact["h0.example.test"]))
    assert config.views[0].hosts.names_for(address)[:2] == ["h0.example.test", "h250.example.test"]


def test_hosts_an_alias_reaches_are_read_whole_in_every_view() -> None:
    """With an alias anywhere in the file a mapping may be read twice (`hosts: *shared` in a
    second view), so nothing is let go of: both views answer every name."""
    text = (
        "views:\n  - name: lan\n    clients: [192.0.2.0/25]\n    hosts: &shared\n"
        + _big_hosts(12000)
        + "  - name: guests\n    clients: [192.0.2.128/25]\n    hosts: *shared\n"
    )
    assert len(text) > FAST_PARSE
    config = model.loads(text, "big.yaml")
    assert [len(v.hosts) for v in config.views] == [12000, 12000]


def test_an_error_in_released_hosts_still_names_its_line() -> None:
    text = "views:\n  - name: lan\n    clients: [192.0.2.0/24]\n    hosts:\n" + _big_hosts(12000)
    broken = text.replace("h5000.example.test: 192.0.2.1", "h5000.example.test: [192.0.2.1, x]")
    with pytest.raises(model.ConfigError, match=r"big\.yaml:5005: .*h5000\.example\.test"):
        model.loads(broken, "big.yaml")
