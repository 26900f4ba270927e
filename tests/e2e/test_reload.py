"""Reload under steady load: a good file switches answers, a bad one is rejected precisely and
the old rules keep answering; not one query fails across both."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.support.fakeupstream import FakeUpstream
from tests.support.servers import Process, free_port

CONFIG = """\
upstreams: ["{up}"]
views:
  - name: lan
    clients: [127.0.0.1/32]
    rewrite:
      - {{from: 203.0.113.1, to: {to}}}
"""


@pytest.fixture
def readable_dir() -> Iterator[Path]:
    """splitdns drops root to `nobody` when started as root: the file must stay readable."""
    path = Path(tempfile.mkdtemp(prefix="splitdns-reload-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def answer(port: int) -> str:
    q = dns.message.make_query("www.example.test", "A")
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=2)
    if r.rcode() != dns.rcode.NOERROR:
        return dns.rcode.to_text(r.rcode())
    return str(r.answer[0][0])


def steady_load(port: int, results: list[str], stop: threading.Event, seconds: float) -> None:
    """Ask www.example.test until `stop`, bounded in count (20,000) and time; each answer
    (or "timeout") appended to `results`."""
    deadline = time.monotonic() + seconds
    while not stop.is_set() and len(results) < 20000 and time.monotonic() < deadline:
        try:
            results.append(answer(port))
        except dns.exception.Timeout:
            results.append("timeout")
        time.sleep(0.002)


def serve(conf: Path, port: int) -> Process:
    """`splitdns serve` on the file, on 127.0.0.1:port (callers wait for "serving")."""
    argv = [sys.executable, "-m", "splitdns", "serve", "-c", str(conf)]
    return Process(
        [*argv, "--listen", f"127.0.0.1:{port}"], env=dict(os.environ, PYTHONUNBUFFERED="1")
    )


def wait_answer(port: int, want: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answer(port) == want:
            return True
        time.sleep(0.05)
    return False


def test_reload_under_load(readable_dir: Path) -> None:
    up = FakeUpstream().add("www.example.test. 1 IN A 203.0.113.1").start()
    conf = readable_dir / "splitdns.yaml"
    write(conf, CONFIG.format(up=up.address, to="192.0.2.2"))
    port = free_port()
    proc = serve(conf, port)
    stop = threading.Event()
    results: list[str] = []

    worker = threading.Thread(target=steady_load, args=(port, results, stop, 60))
    try:
        proc.wait_for("serving")
        assert answer(port) == "192.0.2.2"
        worker.start()
        # A good edit, picked up by the file watch.
        write(conf, CONFIG.format(up=up.address, to="192.0.2.3"))
        assert wait_answer(port, "192.0.2.3")
        proc.wait_for("reloaded (file changed)")
        # A bad edit: rejected with file, line and key; the old rules keep answering.
        write(conf, CONFIG.format(up=up.address, to="192.0.2.300"))
        proc.wait_for("rejected")
        assert f"{conf}:6: views[0].rewrite[0].to: '192.0.2.300'" in proc.output
        time.sleep(0.5)
        assert answer(port) == "192.0.2.3"
        # A good edit again, by SIGHUP this time.
        write(conf, CONFIG.format(up=up.address, to="192.0.2.4"))
        proc.proc.send_signal(signal.SIGHUP)
        assert wait_answer(port, "192.0.2.4")
        time.sleep(0.3)
    finally:
        stop.set()
        if worker.is_alive():
            worker.join(10)
        assert proc.stop() == 0, proc.output
        up.stop()
    assert len(results) > 100
    bad = [r for r in results if r not in ("192.0.2.2", "192.0.2.3", "192.0.2.4")]
    assert bad == [], f"{len(bad)} of {len(results)} queries failed: {bad[:5]}"


def test_reload_switches_the_rebinding_guard_and_case_randomization(readable_dir: Path) -> None:
    up = (
        FakeUpstream()
        .add("evil.example.test. 1 IN A 192.168.1.1", "evil.example.test. 1 IN A 198.51.100.7")
        .start()
    )
    conf = readable_dir / "splitdns.yaml"
    base = f'upstreams:\n  default: ["{up.address}"]\n'
    write(conf, base + "cache:\n  size: 0\n")
    port = free_port()
    proc = serve(conf, port)

    def addresses() -> list[str]:
        q = dns.message.make_query("evil.example.test", "A")
        r = dns.query.udp(q, "127.0.0.1", port=port, timeout=2)
        return sorted(str(rd) for rrset in r.answer for rd in rrset)

    try:
        proc.wait_for("serving")
        assert addresses() == ["192.168.1.1", "198.51.100.7"]
        assert not any(s.name != s.name.lower() for s in up.seen)
        write(conf, base + "  case_randomization: true\ncache:\n  size: 0\nrebinding_guard: true\n")
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while addresses() != ["198.51.100.7"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert addresses() == ["198.51.100.7"]
        up.seen.clear()
        for _ in range(4):
            addresses()
        assert any(s.name != s.name.lower() for s in up.seen)  # 0x20 took effect too
    finally:
        assert proc.stop() == 0, proc.output
        up.stop()


def test_a_configmap_style_symlink_swap_is_reloaded_within_2_s(readable_dir: Path) -> None:
    """Kubernetes mounts a ConfigMap as FILE -> ..data/FILE, ..data -> ..TIMESTAMP/, and
    updates it by writing a new ..TIMESTAMP/ and renaming a new ..data link over the old one.
    The same size, perhaps the same second: the watcher still sees it (the inode changes)."""
    up = FakeUpstream().add("www.example.test. 1 IN A 203.0.113.1").start()

    def version(name: str, to: str) -> None:
        folder = readable_dir / name
        folder.mkdir()
        folder.chmod(0o755)
        write(folder / "splitdns.yaml", CONFIG.format(up=up.address, to=to))

    version("..2026_11_30_00_00_01.1", "192.0.2.2")
    (readable_dir / "..data").symlink_to("..2026_11_30_00_00_01.1")
    conf = readable_dir / "splitdns.yaml"
    conf.symlink_to("..data/splitdns.yaml")
    port = free_port()
    proc = serve(conf, port)
    try:
        proc.wait_for("serving")
        assert answer(port) == "192.0.2.2"
        version("..2026_11_30_00_00_02.2", "192.0.2.3")  # same length as the first
        (readable_dir / "..data_tmp").symlink_to("..2026_11_30_00_00_02.2")
        began = time.monotonic()
        os.replace(readable_dir / "..data_tmp", readable_dir / "..data")
        assert wait_answer(port, "192.0.2.3", timeout=5)
        took = time.monotonic() - began
        print(f"\nConfigMap-style swap reloaded in {took:.2f} s")
        assert took < 2.0
    finally:
        assert proc.stop() == 0, proc.output
        up.stop()
        for child in sorted(readable_dir.iterdir(), reverse=True):
            if child.is_dir() and not child.is_symlink():
                for inner in child.iterdir():
                    inner.unlink()
                child.rmdir()
            else:
                child.unlink()


TORN = """\
upstreams: ["{up}"]
views:
  - name: lan
    clients: [127.0.0.1/32]
    rewrite:
{others}      - {{from: 203.0.113.1, to: 192.0.2.2}}
{tail}"""


def torn_write(conf: Path, text: str, cut: int, pause: float) -> None:
    """Rewrite `conf` in place, as an editor or `cat > file` does: truncated, the first `cut`
    characters written and flushed, a pause, then the rest."""
    with open(conf, "w") as out:
        out.write(text[:cut])
        out.flush()
        os.fsync(out.fileno())
        time.sleep(pause)
        out.write(text[cut:])


@pytest.mark.parametrize("finished", ["valid", "invalid"])
def test_a_file_written_in_place_with_a_pause_is_never_served_half(
    readable_dir: Path, finished: str
) -> None:
    """The valid prefix (the rule for www cut off) is never loaded: 0 public answers."""
    up = FakeUpstream().add("www.example.test. 1 IN A 203.0.113.1").start()
    others = "".join(
        f"      - {{from: 198.51.100.{n}, to: 192.0.2.{n + 100}}}\n" for n in range(40)
    )
    conf = readable_dir / "splitdns.yaml"
    write(conf, TORN.format(up=up.address, others=others, tail=""))
    port = free_port()
    proc = serve(conf, port)
    stop = threading.Event()
    results: list[str] = []

    worker = threading.Thread(target=steady_load, args=(port, results, stop, 30))
    try:
        proc.wait_for("serving")
        assert answer(port) == "192.0.2.2"
        worker.start()
        tail = "# edited\n" if finished == "valid" else "cache: {size: -1}\n"
        text = TORN.format(up=up.address, others=others, tail=tail)
        cut = text.index("      - {from: 203.0.113.1")  # the prefix: valid, without the rule
        torn_write(conf, text, cut, 1.5)
        proc.wait_for("reloaded (file changed)" if finished == "valid" else "rejected")
        time.sleep(0.5)
    finally:
        stop.set()
        if worker.is_alive():
            worker.join(10)
        assert proc.stop() == 0, proc.output
        up.stop()
    reloads = proc.output.count("reloaded (file changed)") + proc.output.count("rejected")
    print(f"\ntorn write ({finished}): {len(results)} answers, {reloads} reload(s)")
    assert reloads == 1, proc.output  # the whole file, once: never the prefix
    bad = [r for r in results if r != "192.0.2.2"]
    assert len(results) > 100
    assert bad == [], f"{len(bad)} of {len(results)} answers wrong: {bad[:5]}"


def test_the_file_watch_holds_back_a_change_that_empties_a_view(readable_dir: Path) -> None:
    """A mapping whose view lost every rule (a torn write cut at its `rewrite:`) is not
    applied by the file watch; the operator's SIGHUP applies it. Removed rules are logged."""
    up = FakeUpstream().add("www.example.test. 1 IN A 203.0.113.1").start()
    conf = readable_dir / "splitdns.yaml"
    write(conf, CONFIG.format(up=up.address, to="192.0.2.2"))
    port = free_port()
    proc = serve(conf, port)
    try:
        proc.wait_for("serving")
        emptied = CONFIG.format(up=up.address, to="192.0.2.2").split("    rewrite:")[0]
        write(conf, emptied)
        proc.wait_for("held back")
        assert "leaves view(s) lan without the rewrite rules they had" in proc.output
        time.sleep(0.5)
        assert answer(port) == "192.0.2.2"
        proc.proc.send_signal(signal.SIGHUP)
        assert wait_answer(port, "203.0.113.1")
        proc.wait_for("reload (SIGHUP) removed view lan: rewrite 203.0.113.1")
    finally:
        assert proc.stop() == 0, proc.output
        up.stop()
