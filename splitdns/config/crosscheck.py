"""What `check` warns about beyond what a mapping must be: settings that load but would
surprise (views `allow` leaves out, DNS64 dead ends, names a later rule shadows, NAT forwards
no rewrite uses, DNS interception left open, a dashboard in plain http on the LAN).

Errors stop a load (config/model.py); these only print. `rewrite_targets` is also what the
NAT companion renders hairpin rules for.
"""

from __future__ import annotations

import ipaddress

from splitdns.config.model import Config, Rule, View, network_inside


def rewrite_targets(config: Config) -> frozenset[ipaddress.IPv4Address]:
    """NAT forward targets that some view's IPv4 rewrite hands to its clients."""
    if config.nat is None:
        return frozenset()
    targets = [r.target for v in config.views for r in v.rules if r.target.version == 4]
    return frozenset(f.target for f in config.nat.forwards if any(f.target in t for t in targets))


def views_outside_allow(config: Config) -> list[str]:
    """Views whose clients `allow` leaves out: those clients would get REFUSED, the view
    never used for them (a warning, not an error: `allow` may be narrowed on purpose)."""
    warnings: list[str] = []
    for view in config.views:
        for net in view.clients:
            inside = [a for a in config.allow if a.version == net.version and a.overlaps(net)]
            if not inside:
                how = "outside"
            elif any(network_inside(net, a) for a in inside):
                continue
            else:
                how = "partly outside"
            warnings.append(
                f"views.{view.name}.clients: {net} is {how} allow "
                f"({', '.join(map(str, config.allow))}): those clients get REFUSED, never "
                f"view {view.name}; add {net} to allow"
            )
    return warnings


def dns64_cases(view: View) -> list[tuple[Rule, str, str]]:
    """For each IPv4 rule of a DNS64 view: (rule, case, what IPv6-only clients get) where
    case is "server" (its own IPv6 address: the server sees the client), "nat64" (the
    prefix + the internal address: through NAT64, the server sees the NAT64's address) or
    "nodata" (the well-known prefix cannot embed it: no AAAA at all)."""
    settings = view.dns64
    out: list[tuple[Rule, str, str]] = []
    if settings is None:
        return out
    for rule in view.rules:
        if rule.target.version != 4:
            continue
        targets = list(rule.target) if rule.target.num_addresses <= 256 else []
        paired = [t for t in targets if settings.server_for(t) is not None]
        if targets and len(paired) == len(targets):
            shown = ", ".join(str(settings.server_for(t)) for t in paired)
            out.append((rule, "server", f"{shown}: the server sees the client's own address"))
        elif not settings.well_known:
            out.append(
                (rule, "nat64", f"{settings.prefix} + {rule.target}: through NAT64, the server "
                 "sees the NAT64's address, not the client")
            )  # fmt: skip
        elif rule.target.network_address.is_global:
            out.append((rule, "nat64", f"{settings.prefix} + {rule.target} through NAT64"))
        else:
            out.append(
                (rule, "nodata", f"no AAAA: the well-known prefix must not embed {rule.target} "
                 "(RFC 6052 3.1)")
            )  # fmt: skip
    return out


def dns64_dead_ends(config: Config) -> list[str]:
    """DNS64 views that can only answer NODATA for some rewritten names: said, not refused."""
    warnings = []
    for view in config.views:
        for rule, case, what in dns64_cases(view):
            if case == "nodata":
                warnings.append(
                    f"views.{view.name}.dns64: IPv6-only clients get {what} for names "
                    f"rewrite[{rule.index}] rewrites; give the server's IPv6 address in "
                    "dns64.servers, or use a network-specific prefix"
                )
    return warnings


def shadowed_names(config: Config) -> list[str]:
    """Rules with `names:` whose name a hosts wildcard of the same view answers first (hosts
    answer before any upstream, so the rule never sees that name)."""
    out = []
    for view in config.views:
        if not view.hosts.wildcards:
            continue
        for rule in view.rules:
            for named in rule.names:
                name = named.suffix
                if named.wildcard or name in view.hosts.exact:
                    continue
                covered = view.hosts.covering(name)
                if covered is not None:
                    pattern = covered[0]
                    out.append(
                        f"views.{view.name}.hosts: the wildcard {pattern} answers {name} before "
                        f"rewrite[{rule.index}] (names: {name}) can: give {name} its own hosts "
                        "entry, or narrow the wildcard"
                    )
    return out


def cross_check(config: Config) -> list[str]:
    """What `check` warns about: views whose clients `allow` refuses, and where the DNS
    rewrite and the NAT forwards disagree."""
    warnings = views_outside_allow(config) + dns64_dead_ends(config) + shadowed_names(config)
    warnings += dynamic_warnings(config)
    board = config.dashboard
    if board is not None and not board.loopback and not board.https:
        warnings.append(
            f"dashboard.listen: {board} is plain HTTP beyond loopback: the password and the "
            "session cookie cross the LAN readable by anyone on it; listen on https:// (the "
            "DoT/DoH certificate, made if none is given)"
        )
    nat = config.nat
    if nat is None:
        return warnings
    served = rewrite_targets(config)
    for fwd in nat.forwards:
        if fwd.translated and fwd.target in served:
            warnings.append(
                f"nat.forwards[{fwd.index}]: names rewritten to {fwd.target} send LAN clients to "
                f"{fwd.target}:{fwd.ports.text()}, but the host serves this on port "
                f"{fwd.target_ports.text()}: those clients need the hairpin rule "
                "(splitdns nat --hairpin needed renders it)"
            )
    forward_targets = {f.target for f in nat.forwards}
    for view in config.views:
        for rule in view.rules:
            if rule.source.version != 4 or not rule.active:
                continue
            if (
                rule.target.num_addresses == 1
                and rule.target.network_address not in forward_targets
            ):
                warnings.append(
                    f"views.{view.name}.rewrite[{rule.index}]: {rule.target.network_address} is "
                    "not the target of any nat forward"
                )
            if not nat.dynamic and nat.public not in rule.source:
                warnings.append(
                    f"views.{view.name}.rewrite[{rule.index}]: 'from' {rule.source} does not "
                    f"contain nat.public {nat.public}"
                )
    return warnings + intercept_warnings(config)


def intercept_warnings(config: Config) -> list[str]:
    """`nat.intercept_dns`: splitdns must listen where the rules send DNS, and the address
    redirected devices come from must be allowed and in a view that rewrites."""
    nat = config.nat
    intercept = nat.intercept if nat is not None else None
    if intercept is None:
        return []
    out = []
    hosts = {e.host for e in config.listen if e.port == 53}
    if not hosts & {str(intercept.server), "0.0.0.0"}:
        out.append(
            f"nat.intercept_dns.server: the rules send LAN DNS to {intercept.server}:53, but "
            f"splitdns listens on {', '.join(map(str, config.listen))}"
        )
    seen_as = intercept.server if intercept.on_router else intercept.router
    if seen_as is None or intercept.on_router:
        return out
    where = "nat.intercept_dns.router"
    if not any(seen_as in net for net in config.allow if net.version == 4):
        out.append(
            f"{where}: redirected devices reach splitdns from {seen_as}, which `allow` "
            "refuses: they would get REFUSED; add it to allow"
        )
    view = next((v for v in config.views if any(seen_as in c for c in v.clients)), None)
    if view is None or not view.rules:
        out.append(
            f"{where}: redirected devices reach splitdns from {seen_as}, which no view that "
            "rewrites holds: they would get the public addresses; put it in the LAN view's "
            "clients"
        )
    return out


#: Suffixes no public DNS serves (RFC 8375, RFC 6762, draft-ietf-dnsop-internal-tld), and the
#: private reverse zones: a dynamic zone elsewhere may also exist publicly.
PRIVATE_SUFFIXES = ("home.arpa", "local", "lan", "internal", "localdomain", "in-addr.arpa",
                    "ip6.arpa", "test", "example", "invalid")  # fmt: skip


def dynamic_warnings(config: Config) -> list[str]:
    """The LAN's own names beside the mapping: a `hosts` name inside a dynamic zone (it wins:
    no device can claim it), UPDATEs with no key (refused), a zone that may be public (its
    public names are hidden from the views it is served to)."""
    dynamic = config.dynamic
    if dynamic is None:
        return []
    warnings = []
    for view in config.views:
        names = [*view.hosts.exact, *(f"*.{p.suffix}" for p, _ in view.hosts.wildcards)]
        for name in names:
            zone = dynamic.zone_of(name.removeprefix("*."))
            if zone is not None:
                warnings.append(
                    f"views.{view.name}.hosts: {name} is inside dynamic zone {zone}: the hosts "
                    "entry is answered, whatever a device or an update claims for it"
                )
    if not dynamic.keys:
        warnings.append(
            "dynamic.keys_file: none given: every RFC 2136 update is refused (lease files "
            "still fill the zones); `tsig-keygen NAME > FILE` makes one"
        )
    for zone in dynamic.zones:
        if not any(zone == s or zone.endswith("." + s) for s in PRIVATE_SUFFIXES):
            warnings.append(
                f"dynamic.zones: {zone} may also exist in public DNS: the views it is served to "
                "see only the names splitdns holds there (a subdomain such as lan.{zone} or a "
                "home.arpa name keeps the public ones)"
            )
    return warnings
