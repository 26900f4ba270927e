"""Real processes for end-to-end tests: `splitdns serve` and NSD, on loopback ephemeral ports."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

from tests.support.tools import need


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on `host`."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port")


class Process:
    """A child process whose stderr is collected line by line."""

    def __init__(
        self, argv: list[str], env: dict[str, str] | None = None, nofile: int | None = None
    ) -> None:
        self.argv = argv
        self.lines: list[str] = []

        def limit() -> None:  # soft and hard: the child cannot raise it
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            preexec_fn=limit if nofile is not None else None,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if text in line:
                    return line
            if self.proc.poll() is not None:
                time.sleep(0.1)
                code = self.proc.returncode
                raise RuntimeError(f"{self.argv[0]} exited ({code}):\n{self.output}")
            time.sleep(0.02)
        raise TimeoutError(f"no {text!r} within {timeout}s:\n{self.output}")

    def wait_answering(self, port: int, zone: str, timeout: float = 15.0) -> None:
        """Until the server answers `zone` SOA on 127.0.0.1:port (any answer will do)."""
        deadline = time.monotonic() + timeout
        q = dns.message.make_query(zone, "SOA")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited:\n{self.output}")
            try:
                dns.query.udp(q, "127.0.0.1", port=port, timeout=0.3)
                return
            except (TimeoutError, OSError, dns.exception.Timeout):
                time.sleep(0.1)
        raise TimeoutError(f"{self.argv[0]} did not answer:\n{self.output}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(timeout=2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return int(self.proc.returncode)


class SplitDNS(Process):
    """`python -m splitdns serve` with a config file, listening on 127.0.0.1:<free port>."""

    def __init__(
        self, tmp_path: Path, config_text: str | None, *extra: str, nofile: int | None = None
    ) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "splitdns", "serve", "--listen", f"127.0.0.1:{self.port}"]
        if config_text is not None:
            path = tmp_path / f"splitdns-{self.port}.yaml"
            path.write_text(config_text)
            argv += ["-c", str(path)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        super().__init__([*argv, *extra], env=env, nofile=nofile)
        try:
            self.startup = self.wait_for("serving")
        except BaseException:
            self.stop()  # a failed start must not leak the process or its pipe
            raise

    def query(
        self,
        name: str,
        rdtype: str = "A",
        *,
        source: str = "127.0.0.1",
        tcp: bool = False,
        timeout: float = 5.0,
        **make: object,
    ) -> dns.message.Message:
        q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), **make)  # type: ignore[arg-type]
        if tcp:
            return dns.query.tcp(q, "127.0.0.1", port=self.port, source=source, timeout=timeout)
        return dns.query.udp(q, "127.0.0.1", port=self.port, source=source, timeout=timeout)

    def dig(self, *args: str, source: str = "127.0.0.1") -> str:
        dig = need("dig", "bind9-dnsutils")
        out = subprocess.run(
            [dig, "@127.0.0.1", "-p", str(self.port), "-b", source, "+tries=1", "+time=5", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout + out.stderr


class NSD(Process):
    """NSD serving the given zones on 127.0.0.1:<free port>, in the foreground."""

    def __init__(self, workdir: Path, zones: dict[str, str]) -> None:
        binary = need("nsd", "nsd")
        self.port = free_port()
        conf = self.write_config(workdir, zones, "127.0.0.1", self.port)
        super().__init__([binary, "-d", "-c", str(conf)])
        self.wait_answering(self.port, next(iter(zones)))

    @staticmethod
    def write_config(workdir: Path, zones: dict[str, str], address: str, port: int) -> Path:
        """nsd.conf and zone files for a foreground NSD (also used inside test namespaces)."""
        workdir.mkdir(parents=True, exist_ok=True)
        zone_blocks = []
        for name, text in zones.items():
            (workdir / f"{name}.zone").write_text(text)
            zone_blocks.append(f"zone:\n  name: {name}\n  zonefile: {workdir}/{name}.zone\n")
        conf = workdir / "nsd.conf"
        conf.write_text(
            "server:\n"
            f"  ip-address: {address}@{port}\n"
            f"  port: {port}\n"
            '  username: ""\n'
            '  chroot: ""\n'
            f"  zonesdir: {workdir}\n"
            f"  pidfile: {workdir}/nsd.pid\n"
            '  database: ""\n'
            f"  zonelistfile: {workdir}/zone.list\n"
            f"  xfrdfile: {workdir}/xfrd.state\n"
            f"  xfrdir: {workdir}\n"
            f"  logfile: {workdir}/nsd.log\n"
            "  server-count: 1\n"
            "  verbosity: 1\n  rrl-ratelimit: 0\n"
            "remote-control:\n"
            "  control-enable: no\n" + "".join(zone_blocks)
        )
        subprocess.run([need("nsd-checkconf", "nsd"), str(conf)], check=True, timeout=10)
        return conf


class Unbound(Process):
    """Unbound answering only its local data (the root is a static zone: nothing leaves the
    machine) on 127.0.0.1: plain DNS on `port`, DNS over TLS on `tls_port` and DNS over HTTPS
    (HTTP/2) on `https_port`, with the given key and certificate."""

    def __init__(self, workdir: Path, records: list[str], key: Path, cert: Path) -> None:
        binary = need("unbound", "unbound")
        self.port, self.tls_port, self.https_port = free_port(), free_port(), free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "unbound.conf"
        data = "".join(f'  local-data: "{record}"\n' for record in records)
        conf.write_text(
            "server:\n"
            f"  interface: 127.0.0.1@{self.port}\n"
            f"  interface: 127.0.0.1@{self.tls_port}\n"
            f"  interface: 127.0.0.1@{self.https_port}\n"
            f"  port: {self.port}\n"
            f"  tls-port: {self.tls_port}\n"
            f"  https-port: {self.https_port}\n"
            f"  tls-service-key: {key}\n"
            f"  tls-service-pem: {cert}\n"
            "  do-ip6: no\n"
            "  do-daemonize: no\n"
            '  username: ""\n'
            '  chroot: ""\n'
            f'  directory: "{workdir}"\n'
            f'  pidfile: "{workdir}/unbound.pid"\n'
            "  use-syslog: no\n"
            '  logfile: ""\n'
            "  num-threads: 1\n"
            '  module-config: "iterator"\n'
            "  access-control: 127.0.0.0/8 allow\n"
            '  local-zone: "." static\n' + data + "remote-control:\n  control-enable: no\n"
        )
        subprocess.run(
            [need("unbound-checkconf", "unbound"), str(conf)],
            check=True,
            timeout=10,
            capture_output=True,
        )
        super().__init__([binary, "-d", "-c", str(conf)])
        self.wait_answering(self.port, "example.test")
