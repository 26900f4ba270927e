"""The README's marked command blocks, as the tests run them (the same commands, as printed)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def commands(name: str) -> list[str]:
    """The shell commands of the README block marked `name`, one per logical line."""
    text = README.read_text()
    match = re.search(rf"<!-- readme-test: {re.escape(name)} -->\n```sh\n(.*?)```", text, re.S)
    assert match, f"README.md has no block marked readme-test: {name}"
    joined = match.group(1).replace("\\\n", " ")
    lines = [line.split(" # ")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def base_command(image: str) -> str:
    """The README's line that makes the Debian base `image` (mmdebstrap | podman import)."""
    found = [c for c in commands("container-build") if c.endswith(f"podman import - {image}")]
    assert len(found) == 1, f"README.md's container-build block makes {image} {len(found)} times"
    return found[0]
