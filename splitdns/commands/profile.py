"""`splitdns profile`: an Apple configuration profile (.mobileconfig) that points iOS and macOS
at splitdns's DNS over HTTPS or TLS endpoint (the DNSSettings payload)."""

from __future__ import annotations

import argparse
import ipaddress
import plistlib
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit

NAMESPACE = uuid.UUID("5b0c2a9e-6a55-4f3e-9d1b-7a8f2f3a4c10")  # stable UUIDs per endpoint


def profile(doh: str | None, dot: str | None, addresses: list[str], name: str) -> bytes:
    endpoint = doh or dot or ""
    settings: dict[str, Any]
    if doh:
        settings = {"DNSProtocol": "HTTPS", "ServerURL": doh}
    else:
        settings = {"DNSProtocol": "TLS", "ServerName": dot}
    if addresses:
        settings["ServerAddresses"] = addresses
    identifier = f"splitdns.{uuid.uuid5(NAMESPACE, endpoint)}"
    payload = {
        "PayloadType": "com.apple.dnsSettings.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.dns",
        "PayloadUUID": str(uuid.uuid5(NAMESPACE, endpoint + "#dns")).upper(),
        "PayloadDisplayName": name,
        "DNSSettings": settings,
    }
    document = {
        "PayloadContent": [payload],
        "PayloadDisplayName": name,
        "PayloadDescription": f"Use splitdns ({endpoint}) as this device's encrypted DNS.",
        "PayloadIdentifier": identifier,
        "PayloadRemovalDisallowed": False,
        "PayloadType": "Configuration",
        "PayloadUUID": str(uuid.uuid5(NAMESPACE, endpoint)).upper(),
        "PayloadVersion": 1,
    }
    return plistlib.dumps(document)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


def command(args: argparse.Namespace) -> int:
    if args.doh:
        url = urlsplit(args.doh)
        if url.scheme != "https" or not url.hostname or not url.path:
            print(f"splitdns profile: --doh {args.doh!r}: expected https://HOST/dns-query",
                  file=sys.stderr)  # fmt: skip
            return 2
    if args.dot and _is_address(args.dot):
        print(
            f"splitdns profile: warning: --dot {args.dot} is an address, but iOS and macOS "
            "check the certificate against this name: give the name on the certificate "
            f"(e.g. dns.home.example.com) and the address with --address {args.dot}",
            file=sys.stderr,
        )
    for address in args.address or []:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            print(f"splitdns profile: --address {address!r} is not an IP address", file=sys.stderr)
            return 2
    sys.stdout.buffer.write(profile(args.doh, args.dot, args.address or [], args.name))
    return 0
