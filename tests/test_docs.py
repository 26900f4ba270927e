"""The reference pages, held to what works: every page reachable from the README, every link
and anchor resolving, every YAML block loading as `splitdns check` loads it, every shell block
either run here or named with the test that runs it.

A page a topic (docs/configuration.md is their map): a page that nothing links, a link to a
heading that was renamed, or an example mapping that no longer loads fails here, not in a
user's hands.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from splitdns.config import model as configmod
from splitdns.config.tree import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINKING = [
    ROOT / "README.md",
    *PAGES,
    *sorted(ROOT.glob("deploy/*/README.md")),
    ROOT / "bench" / "README.md",
]
LINK = re.compile(r"\]\(([^)\s]+)\)")
BLOCK = re.compile(r"(?:<!-- docs-test: ([^>]*) -->\n)?```(\w+)\n(.*?)```", re.S)

#: The view a block of view keys (indented, as on the DNS64 page) is checked inside.
VIEW_HEAD = "views:\n  - name: docs\n    clients: [192.168.0.0/16]\n"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


def blocks(languages: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(page#number, mark, body) of each fenced block in these languages."""
    found = []
    for page in PAGES:
        for number, (mark, lang, body) in enumerate(BLOCK.findall(page.read_text()), 1):
            if lang in languages:
                found.append((f"{page.name}#{number}", mark, body))
    return found


def test_every_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in PAGES if f"docs/{p.name}" not in readme]
    assert not unlinked, f"docs pages the README's map does not link: {unlinked}"


@pytest.mark.parametrize("page", LINKING, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ...: not ours to fetch
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


YAMLS = blocks(("yaml",))
SHELLS = blocks(("sh", "bash", "console"))


@pytest.mark.parametrize(("where", "mark", "body"), YAMLS, ids=[w for w, _, _ in YAMLS])
def test_every_yaml_block_loads_as_check_loads_it(where: str, mark: str, body: str) -> None:
    """A whole mapping loads as it is; a block of view keys (indented) loads inside a view; an
    excerpt (`...` for the keys it leaves out) loads merged into the file its mark names."""
    elided = [line for line in body.splitlines() if line.strip() in ("...", "[...]")]
    if mark.startswith("excerpt "):
        assert elided, f"{where}: marked an excerpt but leaves nothing out"
        whole = yaml.safe_load((ROOT / mark.split()[1]).read_text())
        shown = yaml.safe_load("\n".join(x for x in body.splitlines() if x.strip() != "..."))
        text = yaml.safe_dump(merged(whole, shown))
    else:
        assert not elided, f"{where}: an excerpt must be marked <!-- docs-test: excerpt FILE -->"
        text = body if not body.startswith(" ") else VIEW_HEAD + body
    try:
        configmod.loads(text, where)
    except ConfigError as exc:
        pytest.fail(f"{where} does not load: {exc}")


@pytest.mark.parametrize(("where", "mark", "body"), SHELLS, ids=[w for w, _, _ in SHELLS])
def test_every_shell_block_is_run_by_a_test(where: str, mark: str, body: str) -> None:
    """`<!-- docs-test: covered-by tests/FILE.py -->`: that test runs these commands (each
    command's subcommand, script and flags appear in it; packages are what
    scripts/install-test-deps installs); `run`: run here, as written."""
    assert mark, f"{where}: a shell block needs <!-- docs-test: run --> or covered-by TEST"
    lines = [c.split(" #")[0].strip() for c in body.replace("\\\n", " ").splitlines()]
    commands = [c for c in lines if c and not c.startswith("#")]
    if mark == "run":
        path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
        for command in commands:
            done = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True,
                                  text=True, timeout=120, env={"PATH": path})  # fmt: skip
            assert done.returncode == 0, f"{where}: {command}: {done.stderr[-1000:]}"
        return
    kind, _, test = mark.partition(" ")
    assert kind == "covered-by", f"{where}: unknown mark {mark!r}"
    source = (ROOT / test).read_text()
    installer = (ROOT / "scripts" / "install-test-deps").read_text()
    for command in commands:
        words = command.split()
        if words[:2] == ["apt-get", "install"]:
            missing = [p for p in words[2:] if p not in installer]
            assert not missing, f"{where}: scripts/install-test-deps never installs {missing}"
            continue
        wanted = [w for w in words if w.startswith("-") or w.startswith("scripts/")]
        if words[0] == "splitdns":
            wanted.append(f'"{words[1]}"')  # the subcommand, as the test passes it
        missing = [w for w in wanted if w not in source]
        assert not missing, f"{where}: {test} never uses {missing} of `{command}`"
