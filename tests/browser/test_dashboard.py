"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against the real
server, its real upstream (NSD) and real clients (dig).

127.0.0.1 is the LAN view (203.0.113.1 -> 127.0.0.5); 127.0.0.2 is allowed but in no view,
so it gets the public answer. Every name under w.example.test exists (a wildcard), so each
new name is a cache miss the rewrite rule counts.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from splitdns.config.passwords import make_hash, write_hash
from tests.support.browser import PageWatch, chromium
from tests.support.servers import NSD, SplitDNS, free_port
from tests.support.zones import example_zone

pytestmark = pytest.mark.timeout(300)

CONFIG = """\
upstreams: ["127.0.0.1:{nsd}"]
allow: [127.0.0.0/8]
dashboard:
  listen: {listen}
{extra}views:
  - name: lan
    clients: [127.0.0.1/32]
    rewrite:
      - {{from: 203.0.113.1, to: 127.0.0.5}}
"""
ZONE = example_zone("www A 203.0.113.1", "*.w A 203.0.113.1")
names = (f"n{i}.w.example.test" for i in itertools.count())


class Dash(SplitDNS):
    url: str
    config_path: Path


def start(tmp_path: Path, nsd: NSD, *, scheme: str = "http", extra: str = "") -> Dash:
    port = free_port()
    listen = f"{scheme}://127.0.0.1:{port}" if scheme == "https" else f"127.0.0.1:{port}"
    if scheme == "https":
        extra += f"state_dir: {tmp_path / 'state'}\n"
    text = CONFIG.format(nsd=nsd.port, listen=listen, extra=extra)
    server = SplitDNS(tmp_path, text)
    dash = Dash.__new__(Dash)
    dash.__dict__.update(server.__dict__)
    dash.url = f"{scheme}://127.0.0.1:{port}"
    dash.config_path = tmp_path / f"splitdns-{server.port}.yaml"
    return dash


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NSD]:
    server = NSD(tmp_path_factory.mktemp("nsd"), {"example.test": ZONE})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dash(upstream: NSD) -> Iterator[Dash]:
    # splitdns drops root to `nobody`: the mapping it watches must stay readable to it
    folder = Path(tempfile.mkdtemp(prefix="splitdns-dash-"))
    folder.chmod(0o755)
    server = start(folder, upstream)
    server.config_path.chmod(0o644)
    yield server
    server.stop()
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, dash: Dash) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    opened.watch = PageWatch(opened, dash.url)
    yield opened
    context.close()


def dig(server: SplitDNS, name: str, source: str = "127.0.0.1") -> str:
    out = server.dig("+short", name, source=source).strip()
    return out


def live(page: Any, url: str) -> None:
    """Open the dashboard and wait until its live stream is connected."""
    page.goto(url + "/")
    expect(page.locator("#stream-state")).to_have_text("Live")


def test_page_loads_with_no_error_and_nothing_from_another_origin(page: Any, dash: Dash) -> None:
    response = page.goto(dash.url + "/")
    assert response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'self'")
    expect(page.locator("#summary")).to_contain_text("queries")
    page.wait_for_selector("#upstreams tr[data-upstream]")
    page.locator("#plot-qps .uplot").wait_for()
    page.wait_for_timeout(500)
    assert page.watch.errors == []
    assert page.watch.foreign == []
    assert page.text_content("#config-file") == str(dash.config_path)
    listeners = page.text_content("#listeners")
    assert "dashboard" in listeners and f"127.0.0.1:{dash.port}" in listeners


def test_a_dig_query_appears_in_the_stream_with_its_rewrite_and_the_rule_counts_it(
    page: Any, dash: Dash
) -> None:
    live(page, dash.url)
    rule = page.locator('#rules tr[data-rule="lan/0"] td.count')
    rule.wait_for()
    before = int(rule.text_content() or "0")
    name = next(names)
    assert dig(dash, name) == "127.0.0.5"
    asked = time.monotonic()
    row = page.locator("#stream-rows tr", has_text=name)
    row.first.wait_for(timeout=2000)  # the acceptance bound: within 2 s
    seen = time.monotonic() - asked
    text = row.first.text_content()
    assert "rewritten" in text and "203.0.113.1 → 127.0.0.5" in text, text
    assert "127.0.0.1" in text
    deadline = time.monotonic() + 5
    while int(rule.text_content() or "0") <= before and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert int(rule.text_content() or "0") > before
    recent = page.text_content('#rules tr[data-rule="lan/0"]')
    assert name in recent
    assert seen < 2.0
    assert page.watch.errors == []


def test_a_cached_rewritten_answer_shows_its_rewrite_under_rewritten_only(
    page: Any, dash: Dash
) -> None:
    """Issue 38: most of a LAN's answers are cache hits; "is my phone getting the internal
    address?" must be readable for them too."""
    name = next(names)
    assert dig(dash, name) == "127.0.0.5"  # the miss, stored with its rewrite
    live(page, dash.url)
    page.check("#filter-rewritten")
    expect(page.locator("#stream-state")).to_have_text("Live")
    page.wait_for_timeout(600)
    assert dig(dash, name) == "127.0.0.5"  # the hit
    row = page.locator("#stream-rows tr", has_text=name)
    row.first.wait_for(timeout=3000)
    text = row.first.text_content()
    assert "cached" in text and "203.0.113.1 → 127.0.0.5" in text, text
    assert page.watch.errors == []


def test_the_stream_filters_by_client_and_rewritten_only(page: Any, dash: Dash) -> None:
    live(page, dash.url)
    page.check("#filter-rewritten")
    expect(page.locator("#stream-state")).to_have_text("Live")
    page.wait_for_timeout(600)  # the old stream closed, the new one connected
    public, lan = next(names), next(names)
    assert dig(dash, public, source="127.0.0.2") == "203.0.113.1"  # no view: not rewritten
    assert dig(dash, lan) == "127.0.0.5"
    page.locator("#stream-rows tr", has_text=lan).first.wait_for(timeout=3000)
    page.wait_for_timeout(500)
    assert page.locator("#stream-rows tr", has_text=public).count() == 0


def test_the_explain_form_shows_the_rewrite_for_a_lan_client_and_the_public_answer_outside(
    page: Any, dash: Dash
) -> None:
    page.goto(dash.url + "/")
    page.fill("#explain-name", "www.example.test")
    page.fill("#explain-client", "127.0.0.1")
    page.click("#explain-form button")
    out = page.locator("#explain-out")
    out.filter(has_text="final answer").wait_for()
    lan = out.text_content()
    assert "view: lan" in lan and "-> 127.0.0.5 by rewrite[0]" in lan, lan
    assert re.search(r"A\s+127\.0\.0\.5", lan.split("final answer:")[1]), lan
    page.fill("#explain-client", "127.0.0.2")
    page.click("#explain-form button")
    out.filter(has_text="from 127.0.0.2").filter(has_text="final answer").wait_for()
    outside = out.text_content()
    assert "view: none" in outside and "rewrite[0]" not in outside, outside
    assert re.search(r"A\s+203\.0\.113\.1", outside.split("final answer:")[1]), outside


def test_a_row_opens_explain(page: Any, dash: Dash) -> None:
    live(page, dash.url)
    name = next(names)
    dig(dash, name)
    row = page.locator("#stream-rows tr", has_text=name).first
    row.wait_for(timeout=3000)
    row.get_by_role("button").click()
    page.locator("#explain-out").filter(has_text="final answer").wait_for()
    assert f"question: {name} A from 127.0.0.1" in page.text_content("#explain-out")


def test_a_reload_with_a_bad_file_shows_the_refusal(page: Any, dash: Dash) -> None:
    page.goto(dash.url + "/")
    good = dash.config_path.read_text()
    try:
        dash.config_path.write_text(good + "bogus_key: 1\n")
        page.locator("#reload").filter(has_text="refused").wait_for(timeout=10000)
        shown = page.text_content("#reload")
        assert f"{dash.config_path}:" in shown and "bogus_key" in shown, shown
        assert "still serving the previous mapping" in shown
    finally:
        dash.config_path.write_text(good)
    page.locator("#reload").filter(has_text="applied").wait_for(timeout=10000)
    assert dig(dash, "www.example.test") == "127.0.0.5"


def test_every_control_is_reached_by_the_keyboard(page: Any, dash: Dash) -> None:
    live(page, dash.url)
    dig(dash, next(names))
    page.locator("#stream-rows tr button").first.wait_for(timeout=3000)
    page.click("#pause")  # rows stop arriving: the set of controls holds still
    page.evaluate("document.activeElement.blur()")
    wanted = page.evaluate(
        """() => [...document.querySelectorAll('a[href], button, input, select, [tabindex="0"]')]
            .filter(e => !e.closest('[hidden]') && e.offsetParent !== null)
            .map(e => e.id || e.textContent.trim() || e.getAttribute('aria-label'))"""
    )
    reached = []
    for _ in range(len(wanted) * 2 + 10):
        page.keyboard.press("Tab")
        reached.append(
            page.evaluate(
                "(() => { const e = document.activeElement;"
                " return e.id || e.textContent.trim() || e.getAttribute('aria-label'); })()"
            )
        )
    missing = [w for w in wanted if w not in reached]
    assert not missing, f"not reached by Tab: {missing}"
    # and they work from the keyboard: Enter submits explain, Space toggles pause
    page.focus("#explain-name")
    page.keyboard.type("www.example.test")
    page.keyboard.press("Enter")
    page.locator("#explain-out").filter(has_text="final answer").wait_for()
    page.focus("#pause")
    page.keyboard.press("Space")
    assert page.get_attribute("#pause", "aria-pressed") == "false"


def test_an_upstream_stopped_shows_as_down(
    browser: Any, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    own = NSD(tmp_path_factory.mktemp("stopping"), {"example.test": ZONE})
    server = start(tmp_path, own)
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.locator("#upstreams .badge.up").wait_for()
        own.stop()
        for _ in range(3):  # two failures in a row take it out of rotation
            dig(server, next(names))
        page.locator("#upstreams .badge.down").wait_for(timeout=10000)
        assert "down" in page.text_content("#summary")
        failures = page.text_content("#upstreams tr td:last-child")
        assert failures and failures != "none", failures
        page.close()
    finally:
        server.stop()
        own.stop()


def test_a_password_keeps_the_page_shut_until_the_right_one_is_given(
    browser: Any, upstream: NSD, tmp_path: Path
) -> None:
    secret = tmp_path / "dashboard.passwd"
    write_hash(str(secret), make_hash("correct horse battery"))
    server = start(tmp_path, upstream, scheme="https", extra=f"  password_file: {secret}\n")
    try:
        context = browser.new_context(ignore_https_errors=True)
        page = context.new_page()
        watch = PageWatch(page, server.url)
        page.goto(server.url + "/")
        assert page.url == server.url + "/login"
        page.fill("#password", "wrong password")
        with page.expect_response(lambda r: r.url.endswith("/login")) as answered:
            page.click("button[type=submit]")
        assert answered.value.status == 401
        assert page.text_content("#message") == "Wrong password."
        assert context.cookies() == []
        api = context.request.get(server.url + "/api/status")
        assert api.status == 401 and api.json()["error"] == "log in first"
        page.fill("#password", "correct horse battery")
        page.click("button[type=submit]")
        expect(page.locator("#summary")).to_contain_text("queries")
        assert page.url == server.url + "/"
        (cookie,) = context.cookies()
        assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
        assert page.is_visible("#logout button")
        page.click("#logout button")
        page.wait_for_url(server.url + "/login")
        assert context.request.get(server.url + "/api/status").status == 401
        assert watch.foreign == []
        context.close()
    finally:
        server.stop()


def test_check_refuses_a_listen_beyond_loopback_without_a_password(tmp_path: Path) -> None:
    path = tmp_path / "open.yaml"
    path.write_text("upstreams: [127.0.0.1:53]\ndashboard:\n  listen: 0.0.0.0:5380\n")
    out = subprocess.run(
        [sys.executable, "-m", "splitdns", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert f"{path}:3: dashboard.listen: http://0.0.0.0:5380/ is reachable from the network" in (
        out.stderr
    ), out.stderr
    assert "splitdns passwd" in out.stderr


def test_metrics_stay_where_they_were(dash: Dash) -> None:
    with urllib.request.urlopen(dash.url + "/metrics", timeout=5) as reply:
        body = reply.read().decode()
    assert "splitdns_queries_total" in body and "splitdns_dashboard_streams" in body
    with urllib.request.urlopen(dash.url + "/healthz", timeout=5) as reply:
        assert reply.read() == b"ok\n"


def test_a_screenshot_of_a_working_dashboard(page: Any, dash: Dash, tmp_path: Path) -> None:
    """The README's picture is this test's (SPLITDNS_SCREENSHOT=docs/dashboard.png writes it
    there; SPLITDNS_SCREENSHOT_SECONDS=N first answers queries for N seconds, so the plots
    have an hour's shape to show)."""
    seconds = float(os.environ.get("SPLITDNS_SCREENSHOT_SECONDS", "0"))
    clients = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
    until = time.monotonic() + seconds
    for i in itertools.count():  # bounded: 3 queries per round, at most `seconds` long
        source = clients[i % len(clients)]
        dig(dash, "www.example.test" if i % 4 else next(names), source=source)
        if time.monotonic() >= until and i >= 12:
            break
        time.sleep(0.05)
    live(page, dash.url)
    for i in range(6):
        dig(dash, "www.example.test" if i % 2 else next(names), source=clients[i % 2])
    page.locator("#stream-rows tr").nth(3).wait_for(timeout=3000)
    page.fill("#explain-name", "www.example.test")
    page.fill("#explain-client", "127.0.0.1")
    page.click("#explain-form button")
    page.locator("#explain-out").filter(has_text="final answer").wait_for()
    page.locator("#clients tr td.mono").first.wait_for(timeout=6000)
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20000
    wanted = os.environ.get("SPLITDNS_SCREENSHOT")
    if wanted:
        Path(wanted).write_bytes(data)


AXE = Path(__file__).resolve().parents[1] / "fixtures" / "axe" / "axe.min.js"


def serious_problems(page: Any) -> list[str]:
    """What axe-core finds serious or critical on the page as it stands."""
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in found["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_axe_finds_no_serious_accessibility_problem(
    browser: Any, dash: Dash, upstream: NSD, tmp_path: Path
) -> None:
    """axe-core (Deque's engine, vendored in tests/fixtures) on the page with rows, rules and
    an explanation in it, and on the login page. Its script is injected, which the page's CSP
    forbids by design, so these contexts bypass CSP; every other test runs under it."""
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    live(page, dash.url)
    dig(dash, next(names))
    page.locator("#stream-rows tr").first.wait_for(timeout=3000)
    page.fill("#explain-name", "www.example.test")
    page.click("#explain-form button")
    page.locator("#explain-out").filter(has_text="final answer").wait_for()
    page.wait_for_timeout(1600)  # the new rows' highlight has faded
    assert not (problems := serious_problems(page)), "\n".join(problems)
    secret = tmp_path / "pw"
    write_hash(str(secret), make_hash("correct horse battery"))
    shut = start(tmp_path, upstream, extra=f"  password_file: {secret}\n")
    try:
        login = context.new_page()
        login.goto(shut.url + "/login")
        login.fill("#password", "wrong password")
        login.click("button[type=submit]")
        expect(login.locator("#message")).to_have_text("Wrong password.")
        assert not (problems := serious_problems(login)), "\n".join(problems)
    finally:
        shut.stop()
    context.close()
