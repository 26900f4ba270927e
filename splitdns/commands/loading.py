"""Loading the zone mapping for a command: the one place that turns a bad file into a message."""

from __future__ import annotations

import sys

from splitdns.config import model as configmod
from splitdns.config.model import Config, ConfigError


def load_config(path: str | None, listen: list[str] | None, upstreams: list[str] | None) -> Config:
    """The file (or the embedded default) with command-line overrides applied on top."""
    config = configmod.load(path) if path else configmod.load_default()
    return config.with_overrides(listen, upstreams)


def load_or_report(path: str) -> Config | None:
    """The file's config, or None after printing its FILE:LINE: key: message to stderr."""
    try:
        return configmod.load(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
