"""Loading the zone mapping for a command: which file (the same default for every command),
and the one place that turns a bad file into a message.

Every command that reads a mapping (`serve`, `check`, `explain`, `doctor`, `health`, `nat`)
takes the same one when no `-c` is given: `$SPLITDNS_CONFIG`, else the image's and the systemd
unit's `/etc/splitdns/splitdns.yaml` when it exists, else the embedded default. So
`podman exec splitdns splitdns explain NAME` explains with the mapping the server runs, and
each command says which one it used.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from splitdns.config import model as configmod
from splitdns.config.model import Config, ConfigError

CONFIG_ENV = "SPLITDNS_CONFIG"
DEFAULT_PATH = "/etc/splitdns/splitdns.yaml"
#: Listen addresses from the environment (containers, compose), used only when the mapping
#: has no `listen:` of its own: `serve` and `health` agree.
LISTEN_ENV = "SPLITDNS_LISTEN"


@dataclass(frozen=True)
class Choice:
    """The mapping a command uses, and why that one."""

    path: str | None  # None: the embedded default
    origin: str  # "-c", "$SPLITDNS_CONFIG", "the default path", "" (embedded)

    def describe(self) -> str:
        if self.path is None:
            return f"config: the embedded default (no -c, no ${CONFIG_ENV}, no {DEFAULT_PATH})"
        return f"config: {self.path} (from {self.origin})"


def choose(given: str | None) -> Choice:
    if given:
        return Choice(given, "-c")
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    if from_env:
        return Choice(from_env, f"${CONFIG_ENV}")
    if os.path.exists(DEFAULT_PATH):
        return Choice(DEFAULT_PATH, "the default path")
    return Choice(None, "")


def env_listen() -> list[str] | None:
    """$SPLITDNS_LISTEN as a list of addresses (comma-separated), or None when unset."""
    listed = [a.strip() for a in os.environ.get(LISTEN_ENV, "").split(",") if a.strip()]
    return listed or None


def load_config(path: str | None, listen: list[str] | None, upstreams: list[str] | None) -> Config:
    """The file (or the embedded default) with command-line overrides applied on top; then
    $SPLITDNS_LISTEN, but only where neither the command line nor the file says `listen:`."""
    config = configmod.load(path) if path else configmod.load_default()
    if listen is None and not config.listen_given:
        listen = env_listen()
    return config.with_overrides(listen, upstreams)


def listen_origin(config: Config, listen_flags: list[str] | None) -> str:
    """Where the listen addresses in force came from, for the startup line."""
    if listen_flags:
        return "--listen"
    if config.listen_given:
        ignored = f"; ${LISTEN_ENV} ignored" if env_listen() else ""
        return f"the mapping's listen:{ignored}"
    if env_listen():
        return f"${LISTEN_ENV}"
    return "the default"


def load_or_report(path: str | None) -> Config | None:
    """The file's config (the embedded default for None), or None after printing its
    FILE:LINE: key: message to stderr."""
    try:
        return configmod.load(path) if path else configmod.load_default()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
