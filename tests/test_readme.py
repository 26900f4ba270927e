"""The README, followed literally: its quick start, its "own mapping" commands and its container
commands run as written, so the README cannot drift from what works.

Blocks marked `<!-- readme-test: NAME -->` in README.md are extracted (continuation lines
joined, comments dropped) and run with bash in a clean copy of the repository. Substitutions,
each for a reason the machine gives, not the README: a long-running `serve` is started,
checked with `splitdns health` and stopped; listen addresses on port 53 become a free loopback
port (port 53 of a CI host is not ours to take); podman runs with this machine's containers.conf
(tests/support/container.py), builds on the host network (no bridge or firewall rules on the
host) and with the host's CA bundle mounted (pip behind a TLS proxy); the optional mmdebstrap
base is reused when already built.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import pty
import re
import select
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.container import BASE_IMAGE, HOST_CA_BUNDLE, Podman
from tests.support.fakeupstream import FakeUpstream
from tests.support.readme import commands
from tests.support.servers import free_port
from tests.support.tools import need

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The repository as a user's clone has it (tracked files only), with the quick start's
    venv made by the quick start itself."""
    tree = tmp_path_factory.mktemp("clone") / "splitdns"
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            (tree / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name.decode())
    yield tree


def serve_then_stop(command: str, cwd: Path, health: list[str], timeout: float = 600) -> str:
    """Start a command that ends in `serve`, wait until `health` says healthy, stop it."""
    log = cwd / f".readme-test-{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", "-c", command], cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{command} exited {proc.returncode}: {log.read_text()}")
            if Path(health[0]).exists():  # once pip has installed it
                probe = subprocess.run(health, cwd=cwd, capture_output=True, text=True, timeout=30)
                if probe.returncode == 0:
                    return probe.stdout
            time.sleep(0.5)
        raise AssertionError(f"{command}: not healthy within {timeout} s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


def test_quick_start_installs_and_serves_on_the_embedded_default(clean_copy: Path) -> None:
    (first,) = commands("quick-start")
    assert first.endswith(".venv/bin/splitdns serve"), first
    began = time.monotonic()
    said = serve_then_stop(first, clean_copy, [str(clean_copy / ".venv/bin/splitdns"), "health"])
    print(f"\nquick start: installed and healthy in {time.monotonic() - began:.1f} s")
    assert said.strip() == "healthy: 127.0.0.1:5353 answered"


def test_own_mapping_commands_work_from_the_venv(clean_copy: Path) -> None:
    check, serve = commands("own-mapping")
    if not (clean_copy / ".venv/bin/splitdns").exists():
        pytest.skip("needs the quick start's venv (test_quick_start... makes it)")
    out = subprocess.run(["bash", "-c", check], cwd=clean_copy, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0 and "zones/home.yaml: OK" in out.stdout, out.stdout + out.stderr
    port = free_port()
    said = serve_then_stop(
        f"{serve} --listen 127.0.0.1:{port}", clean_copy,
        [str(clean_copy / ".venv/bin/splitdns"), "health", "--server", f"127.0.0.1:{port}"],
        timeout=30,
    )  # fmt: skip
    assert "answered" in said


MAPPING = """\
# the README's container, with a mapping of the test's own (loopback ports, never port 53)
listen: ["127.0.0.1:{plain}", "tls://127.0.0.1:{dot}", "https://127.0.0.1:{doh}/dns-query"]
upstreams: ["{upstream}"]
allow: [127.0.0.0/8]
dashboard: {{listen: "https://127.0.0.1:{dash}", password_file: /etc/splitdns/dashboard.passwd}}
views:
  - name: lan
    clients: [127.0.0.1/32]
    rewrite:
      - {{from: 203.0.113.1, to: 127.0.0.5}}
"""


def with_extras(command: str, extras: list[str]) -> str:
    """The README's podman command with the README's own extra lines for this machine (a CA
    bundle where a proxy intercepts TLS, rlimits where podman's defaults are above the host's)."""
    ca, limits = extras
    if command.startswith("podman build"):
        added = [ca] if HOST_CA_BUNDLE.exists() else []
        added += [limits, "--network host"]  # (RUN steps on the host network: no bridge here)
        return command.replace("podman build", "podman build " + " ".join(added), 1)
    if command.startswith("podman run"):
        return command.replace("podman run", f"podman run {limits}", 1)
    return command


def shell(command: str, cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"{command}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


def kdig_short(port: int, transport: str, name: str) -> str:
    kdig = need("kdig", "knot-dnsutils")
    argv = [kdig, "@127.0.0.1", "-p", str(port), transport, "+short", "+timeout=5", "+retry=0"]
    out = subprocess.run([*argv, name], capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


@pytest.mark.timeout(900)  # two Debian bases and a compiled build on a fresh machine
def test_container_commands_build_and_run_the_image(clean_copy: Path, tmp_path: Path) -> None:
    """Issue #30's acceptance: the README's build and run lines as printed (plus its own lines
    for this machine), a mapping with tls:// and https:// listeners, the README's three
    capabilities only: kdig +tls, kdig +https and curl --doh-url get the LAN answer from the
    container; the healthcheck is in the image and passes; `sed -i` on the host's mapping
    changes the answer within 2 s; explain and doctor inside report on the mapping the server
    runs (doctor passes); the compiled build, and no compiler in the image."""
    podman = Podman(tmp_path)
    machines = machine_store()
    assert podman.store() != machines.get("store"), "the tests' podman must have its own store"
    _, _, build = commands("container-build")
    extras = commands("container-extras")
    run, health = commands("container-run")
    (password,) = commands("container-dashboard")
    podman.ensure_base_image(BASE_IMAGE)  # the README's own lines, as printed
    podman.ensure_build_image()
    stated_base, stated_image = stated_sizes()
    base_size = int(podman.run("image", "inspect", "--format", "{{.Size}}", BASE_IMAGE).stdout)
    assert abs(base_size / 1e6 - stated_base) <= stated_base * 0.1, (base_size, stated_base)
    image = "localhost/splitdns:latest"
    podman.run("rmi", "--force", image, check=False)  # (a rebuild would orphan the old one)
    dangling_before = set(podman.run("images", "-q", "--filter", "dangling=true").stdout.split())
    began = time.monotonic()
    shell(with_extras(build, extras), clean_copy, podman.env)
    built_in = time.monotonic() - began
    dangling = set(podman.run("images", "-q", "--filter", "dangling=true").stdout.split())
    assert dangling <= dangling_before, "the README's build left a dangling image"
    inspected = json.loads(podman.run("image", "inspect", image).stdout)[0]
    assert inspected["Healthcheck"]["Test"] == ["CMD", "/opt/splitdns/bin/splitdns", "health"]
    size = int(podman.run("image", "inspect", "--format", "{{.Size}}", image).stdout)
    assert abs(size / 1e6 - stated_image) <= stated_image * 0.1, (size, stated_image)
    which = (
        "import shutil, splitdns.wire as w; "
        "print(w.__file__, shutil.which('gcc'), shutil.which('cc'))"
    )
    python = "/opt/splitdns/bin/python"
    probe = podman.run(
        "run", "--rm", *extras[1].split(), "--entrypoint", python, image, "-c", which
    ).stdout  # fmt: skip
    wire_file, gcc, cc = probe.split()
    assert wire_file.endswith(".so") and gcc == cc == "None", probe

    upstream = FakeUpstream().add("www.example.test. 300 IN A 203.0.113.1").start()
    plain, dot, doh, dash = free_port(), free_port(), free_port(), free_port()
    mapping = clean_copy / "zones" / "home.yaml"
    mapping.write_text(
        MAPPING.format(plain=plain, dot=dot, doh=doh, dash=dash, upstream=upstream.address)
    )
    name = "splitdns"
    podman.remove(name)
    podman.run("volume", "rm", "--force", "splitdns-state", check=False)
    try:
        # the dashboard's password, written by the image as the README says: at a terminal,
        # answering its two prompts as a person would (getpass flushes input typed early)
        answers = [("password:", "container horse"), ("again:", "container horse")]
        code, said = at_a_terminal(with_extras(password, extras), clean_copy, podman.env, answers)
        assert code == 0, said
        assert (clean_copy / "zones" / "dashboard.passwd").read_text().startswith("scrypt$")
        shell(with_extras(run, extras), clean_copy, podman.env, timeout=120)
        deadline = time.monotonic() + 20
        said = ""
        while time.monotonic() < deadline:
            said = subprocess.run(["bash", "-c", health], cwd=clean_copy, env=podman.env,
                                  capture_output=True, text=True, timeout=60).stdout  # fmt: skip
            if said.startswith("healthy"):
                break
            time.sleep(0.3)
        logs = podman.run("logs", name, check=False)
        startup = logs.stdout + logs.stderr
        assert said.strip() == f"healthy: 127.0.0.1:{plain} answered", said + startup
        assert "build compiled (mypyc)" in startup and "from the mapping's listen:" in startup
        # DoT and DoH from the container, with only the README's capabilities
        assert kdig_short(dot, "+tls", "www.example.test") == "127.0.0.5", startup
        assert kdig_short(doh, "+https", "www.example.test") == "127.0.0.5", startup
        assert curl_doh(doh, "www.example.test") == "127.0.0.5"
        assert_dashboard_logs_in(dash, "container horse")
        # over https, with the certificate DoT and DoH present (the one the pin names)
        assert ssl.get_server_certificate(("127.0.0.1", dash)) == ssl.get_server_certificate(
            ("127.0.0.1", doh)
        )
        healthy = podman.run("healthcheck", "run", name, check=False)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        # an edit on the host, as sed -i makes it (a new file), reaches the server within 2 s
        shell("sed -i 's/127.0.0.5/127.0.0.6/' zones/home.yaml", clean_copy, podman.env)
        edited = time.monotonic()
        while kdig_short(plain, "+notcp", "www.example.test") != "127.0.0.6":
            assert time.monotonic() - edited < 2.0, "the edit did not reach the container"
            time.sleep(0.1)
        took = time.monotonic() - edited
        # commands inside the container use the mapping the server runs, and say so
        explained = podman.run("exec", name, "splitdns", "explain", "www.example.test").stdout
        assert explained.startswith("config: /etc/splitdns/home.yaml (from $SPLITDNS_CONFIG)")
        assert "127.0.0.6" in explained.split("final answer:")[1], explained
        doctor = podman.run("exec", name, "splitdns", "doctor", check=False)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        assert f"listen 127.0.0.1:{plain}: served by splitdns" in doctor.stdout, doctor.stdout
        # every subcommand inside the container: an answer or a one-line error, never a
        # traceback (check read the certificate as root without DAC_OVERRIDE and crashed)
        checked = podman.run("exec", name, "splitdns", "check", check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "pin-sha256: " in checked.stdout and "certificate: self-signed" in checked.stdout
        inside: list[tuple[list[str], int | None]] = [
            (["health"], 0),
            (["nat", "--target", "nftables"], 1),  # (no nat: section: said in a line)
            (["profile", "--dot", "dns.example.test"], 0),
            (["lab"], 1),  # (root with network namespaces only: said in a line)
            (["passwd", "/tmp/pw"], 1),  # (no terminal and no standard input)
            (["import", "/etc/hostname", "--offline"], None),
            (["--version"], 0),
        ]
        for argv, expected in inside:
            ran = podman.run("exec", name, "splitdns", *argv, check=False)
            out = ran.stdout + ran.stderr
            assert "Traceback" not in out, (argv, out)
            assert expected is None or ran.returncode == expected, (argv, ran.returncode, out)
        user = podman.run("top", name, "user").stdout.split()[1:]
        print(f"\ncontainer: built in {built_in:.1f} s ({size / 1e6:.0f} MB, compiled, no "
              f"compiler); DoT, DoH and curl answered; an edit served {took:.2f} s after "
              f"sed -i; runs as {user}")  # fmt: skip
        assert user == ["splitdns"]
    finally:
        podman.remove(name)
        podman.run("volume", "rm", "--force", "splitdns-state", check=False)
        upstream.stop()
        podman.run("rmi", "--force", image, check=False)
    assert machine_store() == machines, "the machine's own podman store was touched"


def machine_store() -> dict[str, str]:
    """What the machine's own podman store holds (a user's containers, volumes, images): the
    tests' podman has a store of its own, so this must not change while they run."""
    podman = shutil.which("podman")
    if podman is None:
        return {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERS_")}
    listings = {
        "store": ["info", "--format", "{{.Store.GraphRoot}}"],
        "containers": ["ps", "--all", "--format", "{{.ID}} {{.Names}} {{.Image}}"],
        "volumes": ["volume", "ls", "--format", "{{.Name}} {{.Mountpoint}}"],
        "images": ["images", "--all", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}"],
    }
    return {
        what: subprocess.run(
            [podman, *argv], capture_output=True, text=True, env=env, timeout=60
        ).stdout.strip()
        for what, argv in listings.items()
    }


def stated_sizes() -> tuple[float, float]:
    """The sizes in MB the README states for the runtime base and the image."""
    text = README.read_text()
    base = re.search(r"the runtime \((\d+) MB\)", text)
    image = re.search(r"# the image \((\d+) MB", text)
    assert base and image, "README.md no longer states the base's and the image's sizes"
    return float(base.group(1)), float(image.group(1))


def at_a_terminal(
    command: str, cwd: Path, env: dict[str, str], answers: list[tuple[str, str]]
) -> tuple[int, str]:
    """Run `command` on a pseudo-terminal, typing each answer once its prompt shows; (exit
    status, what the terminal showed). Bounded: 120 s."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdin=slave,
                            stdout=slave, stderr=slave, start_new_session=True)  # fmt: skip
    os.close(slave)
    shown, answered_to = b"", 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # the other side closed
                    break
                if not chunk:
                    break
                shown += chunk
            if answers and answers[0][0].encode() in shown[answered_to:]:
                answered_to = len(shown)
                os.write(master, answers.pop(0)[1].encode() + b"\n")
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    return code, shown.decode("utf-8", "replace")


def assert_dashboard_logs_in(port: int, password: str) -> None:
    """The container's dashboard (https, a self-signed certificate): shut without a session,
    open with the right password."""
    base = f"https://127.0.0.1:{port}"
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=unverified)
    )
    try:
        opener.open(base + "/api/status", timeout=10)
        raise AssertionError("the dashboard answered without a login")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    jar = http.cookiejar.CookieJar()
    opener.add_handler(urllib.request.HTTPCookieProcessor(jar))
    form = urllib.parse.urlencode({"password": password}).encode()
    with opener.open(base + "/login", data=form, timeout=30) as page:
        assert page.status == 200 and b"dashboard.js" in page.read()
    with opener.open(base + "/api/status", timeout=10) as reply:
        status = json.loads(reply.read())
    assert status["login"] is True and status["upstreams"][0]["up"] is True, status
    assert "compiled" in status["build"] and status["config_file"] == "/etc/splitdns/home.yaml"


def curl_doh(port: int, name: str) -> str:
    """The address curl resolves `name` to over DoH (its verbose output names it)."""
    curl = need("curl", "curl")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    out = subprocess.run([curl, "-sv", "--max-time", "5", "--noproxy", "*", "--doh-insecure",
                          "--doh-url", f"https://127.0.0.1:{port}/dns-query",
                          f"http://{name}:9/"], capture_output=True, text=True, timeout=30,
                         env=env)  # fmt: skip
    found = re.search(r"Trying (\d+\.\d+\.\d+\.\d+):9", out.stderr)
    return found.group(1) if found else out.stderr[-500:]
