"""The certificate the encrypted listeners present: the user's files, or one made here.

Given `tls: {cert, key}`, those files are loaded and watched: certbot and acme.sh renew them in
place, and a change is loaded into the same SSL contexts, so new handshakes get the new
certificate while established connections carry on. Without them, a self-signed certificate
(ECDSA P-256, ten years, the resolver name and the listen addresses as names) is made once and
kept in the state directory, so its pin stays the same across restarts. The pin is the base64
SHA-256 of the public key (what `kdig +tls-pin` and Android/iOS profiles take).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import logging
import os
import pwd
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from splitdns.config.encrypted import default_state_dir
from splitdns.config.model import Config

log = logging.getLogger(__name__)


class CertificateError(ValueError):
    """A certificate or key that cannot be used, naming the file and what is wrong."""


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    self_signed: bool

    def stamp(self) -> tuple[int, int, int, int] | None:
        try:
            c, k = self.cert.stat(), self.key.stat()
        except OSError:
            return None
        return (c.st_mtime_ns, c.st_size, k.st_mtime_ns, k.st_size)


def files_for(config: Config) -> CertFiles:
    """The configured pair, or the self-signed pair's place in the state directory."""
    if config.tls.given:
        assert config.tls.cert is not None and config.tls.key is not None
        return CertFiles(Path(config.tls.cert), Path(config.tls.key), False)
    state = Path(config.state_dir) if config.state_dir else default_state_dir()
    return CertFiles(state / "tls" / "cert.pem", state / "tls" / "key.pem", True)


def names_for(config: Config) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a made certificate carries."""
    names = [config.resolver_name] if config.resolver_name else []
    addresses = sorted(
        {e.host for e in config.encrypted if e.host not in ("0.0.0.0", "::")}
        | {e.host for e in config.listen if e.host not in ("0.0.0.0", "::")}
    )
    return names or ["splitdns.home.arpa"], addresses


def make_self_signed(files: CertFiles, config: Config) -> None:
    """Write a new key (mode 0600) and a self-signed certificate for it."""
    names, addresses = names_for(config)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    files.key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.info(
        "made a self-signed certificate for %s in %s", ", ".join(names + addresses), files.cert
    )


def ensure(config: Config, user: str | None = None) -> CertFiles:
    """The pair to use, made first when it is the self-signed one and missing. Made by root,
    it is handed to `user` (the one splitdns becomes), so its key is readable by that user
    only."""
    files = files_for(config)
    if files.self_signed and not (files.cert.exists() and files.key.exists()):
        make_self_signed(files, config)
        if user and os.geteuid() == 0:
            _hand_over(files, user)
    check(files)
    return files


@contextlib.contextmanager
def acting_as(user: str | None) -> Iterator[bool]:
    """Run the block with `user`'s effective uid and gid when root is about to become that
    user: the certificate is made and read as the one who will use it, in a state directory
    that user owns, with no CHOWN or DAC_OVERRIDE capability (a container's `--cap-drop ALL`
    with SETUID and SETGID back). Yields whether it switched; root's ids come back after."""
    entry = None
    if user and os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            entry = None  # dropping privileges will say the user does not exist
    if entry is None or entry.pw_uid == 0:
        yield False
        return
    try:
        os.setegid(entry.pw_gid)
        os.seteuid(entry.pw_uid)
    except OSError:  # no CAP_SETUID/SETGID: as root, as before
        os.setegid(0)
        yield False
        return
    try:
        yield True
    finally:
        os.seteuid(0)
        os.setegid(0)


def _hand_over(files: CertFiles, user: str) -> None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return  # dropping privileges will say the user does not exist
    for path in (files.key.parent, files.key, files.cert):
        os.chown(path, entry.pw_uid, entry.pw_gid)


def check(files: CertFiles) -> None:
    """Raise CertificateError unless the pair loads and the key matches the certificate."""
    for path in (files.cert, files.key):
        if not path.exists():
            raise CertificateError(f"{path}: no such file")
        if not os.access(path, os.R_OK, effective_ids=os.access in os.supports_effective_ids):
            raise CertificateError(f"{path}: not readable by this user (uid {os.geteuid()})")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise CertificateError(
                f"{files.key}: does not match the certificate {files.cert}"
            ) from None
        raise CertificateError(f"{files.cert} / {files.key}: {exc.reason or exc}") from None


def pin(files: CertFiles) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the certificate: `kdig +tls-pin=...`."""
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def server_context(files: CertFiles, alpn: list[str]) -> ssl.SSLContext:
    """TLS 1.2 or newer, the given ALPN protocols, the pair loaded."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(alpn)
    context.load_cert_chain(files.cert, files.key)
    return context


class Reloader:
    """Loads a changed pair into every context (new handshakes only; open connections keep
    theirs). A half-written or mismatched pair is logged and the old one kept."""

    def __init__(self, files: CertFiles, contexts: list[ssl.SSLContext]) -> None:
        self.files = files
        self.contexts = contexts
        self.seen = files.stamp()
        self.reloads = 0
        self._warned = False

    def poll(self) -> bool:
        now = self.files.stamp()
        if now is None:
            if not self._warned:  # unreadable after dropping root: say so once, not forever
                self._warned = True
                log.warning(
                    "cannot watch %s and %s (uid %d): renewed certificates will not be loaded "
                    "until they are readable by this user",
                    self.files.cert, self.files.key, os.getuid(),
                )  # fmt: skip
            return False
        self._warned = False
        if now == self.seen:
            return False
        self.seen = now
        try:
            check(self.files)
            for context in self.contexts:
                context.load_cert_chain(self.files.cert, self.files.key)
        except (CertificateError, ssl.SSLError, OSError) as exc:
            log.error("certificate changed but cannot be used, keeping the old one: %s", exc)
            return False
        self.reloads += 1
        log.info("certificate reloaded from %s (pin-sha256 %s)", self.files.cert, pin(self.files))
        return True
