"""Config: table-driven snippets, each with the value or the exact error it must give."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from splitdns.config import model as config
from splitdns.config.model import ConfigError, Endpoint, parse_endpoint

ROOT = Path(__file__).resolve().parents[2]


def load(text: str) -> config.Config:
    return config.loads(text, "t.yaml")


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(text)
    return str(info.value)


GOOD_VIEW = "views:\n  - name: lan\n    clients: [192.168.1.0/24]\n"


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("listen: [1.2.3]\n", "t.yaml:1: listen[0]: '1.2.3' is not an IP address"),
        ("listne: []\n", "t.yaml:1: listne: unknown key: did you mean 'listen'? (known keys:"),
        ("timeout: fast\n", "t.yaml:1: timeout: must be a number, not 'fast'"),
        ("timeout: 0\n", "t.yaml:1: timeout: must be between 0.1 and 60, not 0"),
        (
            "upstreams: ['9.9.9.9:99999']\n",
            "t.yaml:1: upstreams[0]: '9.9.9.9:99999': '99999' is not a port",
        ),
        ("allow: [192.168.1.1/24]\n", "t.yaml:1: allow[0]: '192.168.1.1/24' has host bits set"),
        ("views: {}\n", "t.yaml:1: views: must be a list, not a mapping"),
        ("timeout: 1\ntimeout: 2\n", "t.yaml:2: timeout: duplicate key"),
        ("listen: [\n", "t.yaml:2: YAML syntax: a value is missing"),
        (
            GOOD_VIEW + "    rewrite:\n      - from: 203.0.113.1\n        to: 192.168.1.300\n",
            "t.yaml:6: views[0].rewrite[0].to: '192.168.1.300' is not an address or network",
        ),
        (
            GOOD_VIEW + "    rewrite:\n      - from: 203.0.113.0/29\n        to: 192.168.1.0/28\n",
            "t.yaml:6: views[0].rewrite[0].to: size mismatch",
        ),
        (
            GOOD_VIEW + "    rewrite:\n      - from: 203.0.113.1\n        to: fd00::1\n",
            "t.yaml:6: views[0].rewrite[0].to: fd00::1/128 is IPv6 but 'from' is IPv4",
        ),
        (
            GOOD_VIEW + "    rewrite:\n      - from: 203.0.113.1\n",
            "t.yaml:5: views[0].rewrite[0]: missing 'to'",
        ),
        (
            GOOD_VIEW + "    rewrite:\n      - {from: 203.0.113.1, to: 10.0.0.1}\n"
            "      - {from: 203.0.113.1, to: 10.0.0.2}\n",
            "t.yaml:6: views[0].rewrite[1]: same 'from' 203.0.113.1/32 as rewrite[0]",
        ),
        (
            GOOD_VIEW + "    rewrite:\n      - {from: 203.0.113.1, to: 10.0.0.1, names: []}\n",
            "t.yaml:5: views[0].rewrite[0].names: must list at least one name",
        ),
        (
            GOOD_VIEW + "    rewrite:\n      - {from: 203.0.113.1, to: 10.0.0.1, nmaes: [a]}\n",
            "t.yaml:5: views[0].rewrite[0].nmaes: unknown key",
        ),
        (GOOD_VIEW + "    aaaa: maybe\n", "t.yaml:4: views[0].aaaa: must be one of keep, drop"),
        (
            GOOD_VIEW + "  - name: lan\n    clients: [10.0.0.0/8]\n",
            "t.yaml:4: views[1].name: duplicate view name 'lan'",
        ),
        (
            GOOD_VIEW + "  - name: sub\n    clients: [192.168.1.128/25]\n",
            "t.yaml:5: views[1].clients: every client here is already matched by an earlier view",
        ),
        (
            "views:\n  - name: lan\n    clients: [10.0.0.0/8, 10.1.0.0/16]\n",
            "t.yaml:3: views[0].clients[1]: 10.1.0.0/16 overlaps 10.0.0.0/8 in the same view",
        ),
        ("views:\n  - clients: [10.0.0.0/8]\n", "t.yaml:2: views[0]: missing 'name'"),
        (
            GOOD_VIEW + "    hosts:\n      'bad name': 192.168.1.5\n",
            "t.yaml:5: views[0].hosts.bad name: 'bad name' is not a valid domain name",
        ),
        (
            GOOD_VIEW + "    hosts:\n      nas.home.arpa: [192.168.1.5, nope]\n",
            "t.yaml:5: views[0].hosts.nas.home.arpa[1]: 'nope' is not an IP address",
        ),
        (GOOD_VIEW + "    hosts_ttl: -1\n", "t.yaml:4: views[0].hosts_ttl: must be between 0"),
        ("tcp_max_connections: true\n", "t.yaml:1: tcp_max_connections: must be a whole number"),
        ("- a\n- b\n", "t.yaml:1: the file must be a mapping of settings (key: value), not a list"),
        ("cache:\n  size: -1\n", "t.yaml:2: cache.size: must be between 0 and 10000000, not -1"),
        ("cache:\n  sise: 10\n", "t.yaml:2: cache.sise: unknown key"),
        ("cache:\n  serve_stale: 1\n", "t.yaml:2: cache.serve_stale: must be true or false"),
        (
            "cache:\n  min_ttl: 600\n  max_ttl: 60\n",
            "t.yaml:2: cache.min_ttl: is above max_ttl (60)",
        ),
        ("workers: 0\n", "t.yaml:1: workers: must be between 1 and 64, not 0"),
        (
            GOOD_VIEW + "    rewrite:\n      - from: {follow: home.example.net}\n"
            "        to: 192.168.1.0/29\n",
            "t.yaml:6: views[0].rewrite[0].to: with 'follow' or 'interface', 'to' must be one "
            "IPv4 address",
        ),
        (
            GOOD_VIEW
            + "    rewrite:\n      - from: {folow: home.example.net}\n        to: 10.0.0.1\n",
            "t.yaml:5: views[0].rewrite[0].from.folow: unknown key",
        ),
    ],
)
def test_errors_name_file_line_and_key(snippet: str, expected: str) -> None:
    assert error_of(snippet).startswith(expected)


def test_full_example_normalises() -> None:
    cfg = load(
        """
listen: ["0.0.0.0:53", "[::]:5353"]
upstreams: ["192.168.1.1", "9.9.9.9:53", "2001:db8::53", "[2001:db8::54]:5300"]
allow: [192.168.0.0/16]
views:
  - name: lan
    clients: 192.168.1.0/24
    rewrite:
      - from: 203.0.113.1
        to: 192.168.1.2
      - from: 203.0.113.1
        to: 192.168.1.3
        names: [Mail.Example.COM., "*.svc.example.com"]
    aaaa: drop
    hosts:
      NAS.home.arpa: 192.168.1.5
      "*.lab.example.com": [192.168.1.7, "fd00::7"]
"""
    )
    assert cfg.listen == (Endpoint("0.0.0.0", 53), Endpoint("::", 5353))
    assert [str(u) for u in cfg.upstreams] == [
        "192.168.1.1:53",
        "9.9.9.9:53",
        "[2001:db8::53]:53",
        "[2001:db8::54]:5300",
    ]
    view = cfg.views[0]
    assert view.aaaa == "drop"
    assert [str(p) for p in view.rules[1].names] == ["mail.example.com", "*.svc.example.com"]
    assert view.hosts.lookup("nas.home.arpa") == (ipaddress.ip_address("192.168.1.5"),)
    assert view.hosts.lookup("a.b.lab.example.com") is not None
    assert view.hosts.lookup("lab.example.com") is None


def test_missing_upstreams_come_from_resolv_conf(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# c\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver ::1\n")
    assert [str(e) for e in config.resolv_conf_upstreams(str(resolv))] == [
        "192.0.2.53:53",
        "[::1]:53",
    ]
    assert config.resolv_conf_upstreams(str(tmp_path / "absent")) == ()


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "nope.yaml")


def test_empty_file_is_a_valid_config() -> None:
    cfg = load("")
    assert cfg.listen == (Endpoint("127.0.0.1", 5353),) and cfg.views == ()


def test_overrides_win() -> None:
    cfg = load("upstreams: [192.0.2.1]\n").with_overrides(["127.0.0.1:5300"], ["192.0.2.9"])
    assert cfg.listen == (Endpoint("127.0.0.1", 5300),)
    assert [str(u) for u in cfg.upstreams] == ["192.0.2.9:53"]
    assert cfg.upstreams_origin == "command line"


@pytest.mark.parametrize(
    ("text", "default", "expected"),
    [
        ("1.2.3.4", 53, Endpoint("1.2.3.4", 53)),
        ("1.2.3.4:5300", 53, Endpoint("1.2.3.4", 5300)),
        ("::1", 53, Endpoint("::1", 53)),
        ("[::1]:5353", None, Endpoint("::1", 5353)),
    ],
)
def test_endpoints(text: str, default: int | None, expected: Endpoint) -> None:
    assert parse_endpoint(text, default) == expected


@pytest.mark.parametrize("text", ["1.2.3.4", "[::1", "host:53", "[::1]x", "1.2.3.4:http"])
def test_bad_listen_endpoints(text: str) -> None:
    with pytest.raises(ValueError):
        parse_endpoint(text, None)


@pytest.mark.parametrize("path", sorted((ROOT / "zones").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_example_loads(path: Path) -> None:
    cfg = config.load(path)
    assert cfg.views, f"{path.name} should show at least one view"


def test_follow_rule_is_inactive_until_resolved() -> None:
    cfg = load(
        GOOD_VIEW + "    rewrite:\n      - {from: {follow: Home.Example.NET}, to: 192.168.1.2}\n"
    )
    rule = cfg.views[0].rules[0]
    assert (rule.follow, rule.active) == ("home.example.net", False)
    assert str(rule) == "{follow: home.example.net} (not resolved yet) -> 192.168.1.2"


def test_cache_settings() -> None:
    cfg = load("cache: {size: 5, serve_stale: true, prefetch: true, servfail_ttl: 0}\n")
    assert (cfg.cache.size, cfg.cache.serve_stale, cfg.cache.prefetch) == (5, True, True)
    assert cfg.cache.servfail_ttl == 0 and cfg.cache.max_ttl == 86400


def test_embedded_default() -> None:
    cfg = config.load_default()
    assert cfg.listen == (Endpoint("127.0.0.1", 5353),)
    assert [v.name for v in cfg.views] == ["lan"] and cfg.rule_count == 0


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [  # found by tests/fuzz: YAML that PyYAML composes but cannot construct
        ("!0\n", "t.yaml:1: the file must be a mapping of settings (key: value), not '' tagged !0"),
        ("timeout: !foo 3\n", "t.yaml:1: timeout: cannot read '3' (!foo): could not determine"),
        ("timeout: 2026-13-45\n", "t.yaml:1: timeout: cannot read '2026-13-45'"),
        ("listen: !!binary xx\n", "t.yaml:1: listen: cannot read 'xx'"),
        ("upstreams: [true]\n", "t.yaml:1: upstreams[0]: must be a string, not True"),
        ("=:\n", "t.yaml:1: key '=' must be a string"),  # "=" is YAML's "value" tag
        ("cache:\n  =: 1\n", "t.yaml:2: cache: key '=' must be a string"),
    ],
)
def test_unconstructible_yaml_is_a_config_error(snippet: str, expected: str) -> None:
    assert error_of(snippet).startswith(expected), error_of(snippet)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD_VIEW + "     rewrite: []\n",
            "t.yaml:4: YAML syntax: this line is indented differently from the lines above it "
            "(YAML says: expected <block end>, but found '<block mapping start>')\n"
            "  4 |      rewrite: []\n"
            "           ^",
        ),
        (
            "views:\n  - name lan\n    clients: []\n",
            "t.yaml:2: YAML syntax: this line has no ':' after its key (`- name: lan`, not "
            "`- name lan`) (YAML says: mapping values are not allowed here)\n"
            "  2 |   - name lan\n"
            "          ^",
        ),
        (
            "views:\n\t- name: x\n",
            "t.yaml:2: YAML syntax: a tab: YAML indents with spaces only",
        ),
        (
            "hosts:\n  *.lab: 1.2.3.4\n",
            "t.yaml:2: YAML syntax: a '*' or '&' that YAML reads as an alias or anchor: quote the "
            'value ("*.example.com")',
        ),
        (
            "upstreams: [9.9.9.9\ntimeout: 3\n",
            "t.yaml:1: YAML syntax: a [list] that is not closed, or a missing ','",
        ),
        (
            GOOD_VIEW + "    rewrites: []\n",
            "t.yaml:4: views[0].rewrites: unknown key: did you mean 'rewrite'? (known keys: "
            "aaaa, clients, dns64, hosts, hosts_ttl, https, name, rewrite)",
        ),
    ],
)
def test_yaml_mistakes_in_plain_words_on_the_line_of_the_mistake(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected), error_of(text)


def test_hosts_lookups_use_indexes_with_the_scans_answers() -> None:
    """Hosts answers by index (an import brings 100,000 wildcards; a scan of them for every
    question cost 12.8 ms): the longest wildcard suffix wins, the first of a repeated one,
    exact names before wildcards, a wildcard never answers its own suffix; PTR names come in
    config order. Checked against the plain scan the index replaced, on a random mix."""
    import ipaddress
    import random

    from splitdns.config.model import Hosts, NamePattern

    a, b, c = (ipaddress.ip_address(f"192.0.2.{i}") for i in (1, 2, 3))
    wildcards = (
        (NamePattern("example.test", True), (a,)),
        (NamePattern("deep.example.test", True), (b,)),
        (NamePattern("example.test", True), (c,)),  # repeated: the first one answers
    )
    hosts = Hosts({"nas.example.test": (c,), "tv.example.test": (c, a)}, wildcards)
    assert hosts.lookup("x.example.test") == (a,)
    assert hosts.lookup("y.x.deep.example.test") == (b,)
    assert hosts.lookup("deep.example.test") == (a,)  # its own parent's wildcard
    assert hosts.lookup("nas.example.test") == (c,)
    assert hosts.lookup("example.test") is None and hosts.lookup("test") is None
    assert hosts.names_for(c) == ["nas.example.test", "tv.example.test"]
    assert hosts.names_for(a) == ["tv.example.test"] and hosts.names_for(b) == []

    rng = random.Random(7)
    labels = ["a", "b", "c", "d"]
    patterns = tuple(
        (
            NamePattern(".".join(rng.choices(labels, k=rng.randint(1, 3))), True),
            (a,) if i % 2 else (b,),
        )
        for i in range(60)
    )
    mixed = Hosts({}, patterns)
    for _ in range(2000):
        name = ".".join(rng.choices(labels, k=rng.randint(1, 5)))
        best, best_len = None, -1
        for pattern, addresses in patterns:  # the scan Hosts.lookup used to do
            if pattern.matches(name) and len(pattern.suffix) > best_len:
                best, best_len = addresses, len(pattern.suffix)
        assert mixed.lookup(name) == best, name
