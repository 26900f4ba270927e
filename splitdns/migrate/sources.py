"""Reading other servers' local overrides, one reader per format, each from the format's
documented syntax; `detect` tells them apart by content when `--from` is not given.

adguard   AdGuardHome.yaml: filtering.rewrites (schema 31+; older files: dns.rewrites) with
          domain/answer/enabled, and `$dnsrewrite` lines in user_rules
pihole    Pi-hole v6 pihole.toml [dns] hosts and cnameRecords; v5 custom.list ("IP name") and
          05-pihole-custom-cname.conf ("cname=alias,target")
dnsmasq   address=/name/IP, host-record=, cname=, alias= (a rule by address already)
unbound   local-data, local-zone ... redirect, view: with access-control-view, response-ip
technitium the Split Horizon app's config (networks, groups' externalToInternalTranslation)
coredns   a Corefile's hosts blocks
blocky    customDNS.mapping
hosts     /etc/hosts
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from splitdns.migrate.entries import (
    DirectRule,
    Entry,
    ImportError_,
    IPAddress,
    Source,
    SourceView,
    address,
    clean_name,
)

FORMATS = ("adguard", "pihole", "dnsmasq", "unbound", "technitium", "coredns", "blocky", "hosts")


def detect(path: str, text: str) -> str:
    """The format of `text`, by what only that format says; ImportError_ when none fits."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and ("groups" in data or "networks" in data):
            return "technitium"
    if re.search(r"^\s*\[dns\]\s*$", text, re.M) or re.search(r"^\s*cnameRecords\s*=", text, re.M):
        return "pihole"
    if re.search(r"^\s*(server|view|local-zone|local-data)\s*:", text, re.M) and re.search(
        r"local-data\s*:|response-ip\s*:|local-zone\s*:", text
    ):
        return "unbound"
    if re.search(r"^\s*(address|host-record|cname|alias)=", text, re.M):
        return "pihole" if Path(path).name.endswith("pihole-custom-cname.conf") else "dnsmasq"
    if re.search(r"^\s*customDNS\s*:", text, re.M):
        return "blocky"
    if re.search(r"^\s*(filtering|dns)\s*:", text, re.M) and "rewrites" in text:
        return "adguard"
    if re.search(r"\bhosts\b[^\n{]*\{", text):
        return "coredns"
    if any(_hosts_line(line) for line in text.splitlines()):
        return "pihole" if Path(path).name == "custom.list" else "hosts"
    raise ImportError_(
        f"{path}: not a format splitdns import knows ({', '.join(FORMATS)}); name it with --from"
    )


MAX_BYTES = 16 * 1024 * 1024  # a real overrides file is kilobytes; `--max-size` raises it
MAX_ALIASES = 64  # YAML aliases (&a / *a) honoured; a "billion laughs" file has thousands
MAX_DEPTH = 64  # nesting of YAML, TOML or JSON


def read(path: str, fmt: str | None = None, max_bytes: int = MAX_BYTES) -> Source:
    """The file's entries. Anything hostile is an ImportError_ naming the file: not a regular
    file (a FIFO would block for ever, a device never end), over `max_bytes`, not UTF-8, YAML
    with too many aliases, nesting too deep, or a structure not the format's."""
    return parse_text(path, _read_text(path, max_bytes), fmt)


def parse_text(path: str, text: str, fmt: str | None = None) -> Source:
    """`read` for text at hand (`path` only names it in messages)."""
    fmt = fmt or detect(path, text)
    source = Source(path, fmt)
    try:
        READERS[fmt](source, text)
    except RecursionError:
        raise ImportError_(f"{path}: nested too deeply (more than {MAX_DEPTH} levels)") from None
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ImportError_):
            raise
        raise ImportError_(
            f"{path}: not the structure a {fmt} file has ({type(exc).__name__}: {exc})"
        ) from None
    return source


def _read_text(path: str, max_bytes: int) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ImportError_(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImportError_(f"{path}: not a regular file (a pipe, device or directory)")
        if st.st_size > max_bytes:
            raise ImportError_(
                f"{path}: {st.st_size} bytes, more than the {max_bytes} an overrides file "
                "may have (--max-size MB raises it)"
            )
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ImportError_(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:
        raise ImportError_(f"{path}: grew past {max_bytes} bytes while read")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImportError_(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


# --------------------------------------------------------------------------- line formats


def _hosts_line(line: str) -> tuple[IPAddress, list[str]] | None:
    words = line.split("#", 1)[0].split()
    if len(words) < 2:
        return None
    ip = address(words[0])
    return (ip, [clean_name(w) for w in words[1:]]) if ip is not None else None


def _hosts(source: Source, text: str) -> None:
    """/etc/hosts and Pi-hole v5 custom.list: `IP name [alias...]`."""
    for number, line in enumerate(text.splitlines(), 1):
        parsed = _hosts_line(line)
        if parsed is None:
            if line.split("#", 1)[0].strip():
                source.skipped.append((f"{source.path}:{number}", "not `IP name`"))
            continue
        ip, names = parsed
        for name in names:
            if ip.is_loopback or name in ("localhost", "ip6-localhost", "ip6-loopback"):
                continue  # the host's own names, nothing a LAN asks for
            source.entries.append(Entry(name, f"{source.path}:{number}", (ip,)))


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text.strip().strip('"'), strict=False)


def _dnsmasq(source: Source, text: str) -> None:
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        where = f"{source.path}:{number}"
        key = key.strip()
        if key == "address":
            parts = value.split("/")
            if len(parts) < 3:
                source.skipped.append((where, "address= without /name/"))
                continue
            names, answer = [n for n in parts[1:-1] if n], parts[-1].strip()
            ip = address(answer)
            one = (ip,) if ip is not None else ()  # (shared by the line's entries)
            for name in names:
                if ip is None:  # address=/name/ (NXDOMAIN) or /#: a block, not an override
                    source.skipped.append((where, f"{name}: not an address ({answer or 'none'})"))
                else:  # dnsmasq's /name/ covers the name and everything below it
                    clean = clean_name(name)
                    source.entries.append(Entry(clean, where, one))
                    source.entries.append(Entry("*." + clean, where, one))
        elif key == "host-record":
            fields = [f.strip() for f in value.split(",")]
            ips = [ip for f in fields if (ip := address(f)) is not None]
            names = [clean_name(f) for f in fields if address(f) is None and not f.isdigit()]
            if not ips:
                source.skipped.append((where, "host-record= without an address"))
                continue
            for name in names:
                source.entries.append(Entry(name, where, tuple(ips)))
        elif key == "cname":
            fields = [f.strip() for f in value.split(",")]
            if fields and fields[-1].isdigit():
                fields.pop()
            if len(fields) < 2:
                source.skipped.append((where, "cname= needs an alias and a target"))
                continue
            for alias in fields[:-1]:
                source.entries.append(
                    Entry(clean_name(alias), where, target=clean_name(fields[-1]))
                )
        elif key == "alias":
            fields = [f.strip() for f in value.split(",")]
            try:
                old, new = fields[0], fields[1]
                if "-" in old:
                    source.skipped.append((where, "alias= with a range: write it as a network"))
                    continue
                mask = fields[2] if len(fields) > 2 else "255.255.255.255"
                src = ipaddress.ip_network(f"{old}/{mask}", strict=False)
                dst = ipaddress.ip_network(f"{new}/{mask}", strict=False)
            except (ValueError, IndexError):
                source.skipped.append((where, f"alias={value}: not old-IP,new-IP[,mask]"))
                continue
            source.rules.append(DirectRule(src, dst, where))


def _pihole(source: Source, text: str) -> None:
    if source.path.endswith(".toml") or re.search(r"^\s*\[dns\]", text, re.M):
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ImportError_(f"{source.path}: TOML: {exc}") from None
        dns = data.get("dns", {})
        for i, line in enumerate(dns.get("hosts", [])):
            parsed = _hosts_line(str(line))
            if parsed is None:
                source.skipped.append((f"{source.path}: dns.hosts[{i}]", "not `IP name`"))
                continue
            ip, names = parsed
            for name in names:
                source.entries.append(Entry(name, f"{source.path}: dns.hosts[{i}]", (ip,)))
        for i, line in enumerate(dns.get("cnameRecords", [])):
            fields = [clean_name(f) for f in str(line).split(",")]
            if fields and fields[-1].isdigit():
                fields.pop()
            for alias in fields[:-1]:
                where = f"{source.path}: dns.cnameRecords[{i}]"
                source.entries.append(Entry(alias, where, target=fields[-1]))
        return
    if re.search(r"^\s*cname=", text, re.M):
        _dnsmasq(source, text)
    else:
        _hosts(source, text)


def _coredns(source: Source, text: str) -> None:
    inside = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if re.match(r"hosts\b[^{]*\{", line):
            inside = True
            continue
        if inside and line.startswith("}"):
            inside = False
            continue
        if inside:
            parsed = _hosts_line(line)
            if parsed is not None:
                ip, names = parsed
                for name in names:
                    source.entries.append(Entry(name, f"{source.path}:{number}", (ip,)))


# --------------------------------------------------------------------------- YAML formats


class _BoundedLoader(yaml.SafeLoader):
    """safe_load with at most MAX_ALIASES aliases and MAX_DEPTH levels: an alias is a
    reference, cheap to write and exponential to walk ("billion laughs")."""

    aliases = 0
    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ImportError_(
                    f"line {mark.line + 1}: more than {MAX_ALIASES} YAML aliases (*name): "
                    "refused (an alias bomb expands without end)"
                )
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise ImportError_(f"line {mark.line + 1}: nested more than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _yaml(source: Source, text: str) -> dict[str, Any]:
    try:
        loader = _BoundedLoader(text)  # (the reader refuses control characters here)
    except yaml.YAMLError as exc:
        raise ImportError_(f"{source.path}: YAML: {exc}") from None
    try:
        data = loader.get_single_data() or {}
    except ImportError_ as exc:
        raise ImportError_(f"{source.path}: YAML: {exc}") from None
    except yaml.YAMLError as exc:
        raise ImportError_(f"{source.path}: YAML: {exc}") from None
    finally:
        loader.dispose()
    return _mapping(source, data, "the file")


def _mapping(source: Source, value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ImportError_(f"{source.path}: {where}: a mapping expected, not {_kind(value)}")
    return value


def _listing(source: Source, value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ImportError_(f"{source.path}: {where}: a list expected, not {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "text", bool: "true/false"}.get(
        type(value), f"a {type(value).__name__}"
    )


def _adguard(source: Source, text: str) -> None:
    data = _yaml(source, text)
    filtering = _mapping(source, data.get("filtering"), "filtering")
    rewrites, where = filtering.get("rewrites"), "filtering.rewrites"
    if rewrites is None:
        dns = _mapping(source, data.get("dns"), "dns")
        rewrites, where = dns.get("rewrites"), "dns.rewrites"
    for i, item in enumerate(_listing(source, rewrites, where)):
        origin = f"{source.path}: {where}[{i}]"
        if not isinstance(item, dict):
            source.skipped.append((origin, f"{_kind(item)}, not a rewrite (domain, answer)"))
            continue
        name = clean_name(str(item.get("domain", "")))
        answer = str(item.get("answer", "")).strip()
        enabled = bool(item.get("enabled", True))
        ip = address(answer)
        if answer.upper() in ("A", "AAAA"):
            entry = Entry(name, origin, keep=True, enabled=enabled)
        elif ip is not None:
            entry = Entry(name, origin, (ip,), enabled=enabled)
        else:
            entry = Entry(name, origin, target=clean_name(answer), enabled=enabled)
        source.entries.append(entry)
    rules = _listing(source, data.get("user_rules"), "user_rules") or _listing(
        source, filtering.get("user_rules"), "filtering.user_rules"
    )
    for i, rule in enumerate(rules):
        found = re.match(r"^\|\|([^\^$]+)\^\$dnsrewrite=(.+)$", str(rule).strip())
        if not found:
            continue
        origin = f"{source.path}: user_rules[{i}]"
        name, value = clean_name(found.group(1)), found.group(2)
        parts = value.split(";")
        answer = parts[-1] if len(parts) == 3 and parts[1].upper() in ("A", "AAAA") else value
        ip = address(answer)
        if ip is not None:
            source.entries.append(Entry(name, origin, (ip,)))
        elif len(parts) == 3 and parts[1].upper() == "CNAME":
            source.entries.append(Entry(name, origin, target=clean_name(parts[2])))
        else:
            source.skipped.append((origin, f"$dnsrewrite={value}: not a simple address or CNAME"))


def _blocky(source: Source, text: str) -> None:
    data = _yaml(source, text)
    custom = _mapping(source, data.get("customDNS"), "customDNS")
    mapping = _mapping(source, custom.get("mapping"), "customDNS.mapping")
    for name, value in mapping.items():
        ips = [ip for part in str(value).split(",") if (ip := address(part)) is not None]
        origin = f"{source.path}: customDNS.mapping.{name}"
        if ips:
            source.entries.append(Entry(clean_name(str(name)), origin, tuple(ips)))
            source.entries.append(Entry("*." + clean_name(str(name)), origin, tuple(ips)))
        else:
            source.skipped.append((origin, f"{value}: not an address"))


# --------------------------------------------------------------------------- Unbound


def _unbound(source: Source, text: str) -> None:
    view = ""
    redirects: dict[tuple[str, str], str] = {}  # (view, zone) -> origin of local-zone redirect
    datas: list[tuple[str, str, str]] = []  # (view, record text, origin)
    response: dict[str, tuple[str, str]] = {}  # response-ip network -> (action, origin)
    response_data: list[tuple[str, str, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        where = f"{source.path}:{number}"
        if not line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("server", "forward-zone", "stub-zone", "remote-control"):
            view = ""
        elif key == "view":
            view = "?"
        elif key == "name" and view == "?":
            view = value.strip('"')
        elif key == "local-data":
            datas.append((view, value.strip('"'), where))
        elif key == "local-zone":
            words = value.split()
            if len(words) >= 2 and words[1] == "redirect":
                redirects[(view, clean_name(words[0]))] = where
        elif key == "access-control-view":
            net, _, name = value.partition(" ")
            _add_view_client(source, name.strip().strip('"'), _network(net), where)
        elif key == "response-ip":
            net, _, action = value.partition(" ")
            response[net.strip()] = (action.strip(), where)
        elif key == "response-ip-data":
            net, _, record = value.partition(" ")
            response_data.append((net.strip(), record.strip().strip('"'), where))
    for view_name, record, where in datas:
        words = record.split()
        while len(words) > 3 and (words[1].isdigit() or words[1].upper() == "IN"):
            words.pop(1)  # a TTL, the class
        if len(words) < 3 or words[1].upper() not in ("A", "AAAA", "CNAME"):
            source.skipped.append((where, f"{record}: only A, AAAA and CNAME are imported"))
            continue
        name, rtype, value = clean_name(words[0]), words[1].upper(), words[2]
        # local-zone redirect: the zone and everything below it
        names = [name, "*." + name] if (view_name, name) in redirects else [name]
        for each in names:
            if rtype == "CNAME":
                source.entries.append(Entry(each, where, target=clean_name(value), view=view_name))
            elif (ip := address(value)) is not None:
                source.entries.append(Entry(each, where, (ip,), view=view_name))
    for net, record, where in response_data:
        action = response.get(net, ("", ""))[0]
        words = record.split()
        if action != "redirect" or len(words) != 2 or words[0].upper() not in ("A", "AAAA"):
            source.skipped.append(
                (where, f"response-ip-data {record}: not a redirect to an address")
            )
            continue
        try:
            src = _network(net)
            dst = ipaddress.ip_network(words[1], strict=False)
        except ValueError:
            source.skipped.append((where, f"{net} -> {words[1]}: not addresses"))
            continue
        if src.num_addresses != dst.num_addresses:
            source.skipped.append((where, f"{src} -> {dst}: sizes differ"))
            continue
        source.rules.append(DirectRule(src, dst, where))


def _add_view_client(
    source: Source, name: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network, where: str
) -> None:
    for i, view in enumerate(source.views):
        if view.name == name:
            same = [c for c in view.clients if c.version == net.version and c.overlaps(net)]
            if any(net.subnet_of(c) for c in same):  # type: ignore[arg-type]
                return  # (already covered: a repeated or narrower line)
            kept = tuple(c for c in view.clients if c not in same)
            source.views[i] = SourceView(name, (*kept, net))
            return
    source.views.append(SourceView(name, (net,)))


# --------------------------------------------------------------------------- Technitium


def _technitium(source: Source, text: str) -> None:
    """The Split Horizon app's config: `networkGroupMap` (client network -> group) and each
    group's `externalToInternalTranslation` (public -> internal, addresses or networks)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ImportError_(f"{source.path}: JSON: {exc}") from None
    for net, group in (data.get("networkGroupMap") or {}).items():
        _add_view_client(source, str(group), _network(net), f"{source.path}: networkGroupMap")
    for i, group in enumerate(data.get("groups") or []):
        name = str(group.get("name", f"group{i}"))
        origin = f"{source.path}: groups[{i}]"
        if not group.get("enabled", True):
            source.skipped.append((origin, f"group {name} is disabled"))
            continue
        for public, internal in (group.get("externalToInternalTranslation") or {}).items():
            try:
                src, dst = _network(public), _network(internal)
            except ValueError:
                source.skipped.append((origin, f"{public} -> {internal}: not addresses"))
                continue
            source.rules.append(DirectRule(src, dst, origin, view=name))


READERS: dict[str, Callable[[Source, str], None]] = {
    "adguard": _adguard,
    "pihole": _pihole,
    "dnsmasq": _dnsmasq,
    "unbound": _unbound,
    "technitium": _technitium,
    "coredns": _coredns,
    "blocky": _blocky,
    "hosts": _hosts,
}
