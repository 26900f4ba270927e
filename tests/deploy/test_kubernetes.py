"""The Kubernetes manifests: valid against the Kubernetes schemas (kubernetes-validate,
strict: unknown fields are errors), their embedded zone mapping passes `splitdns check`, and
the shapes keep what the views need (host network, or externalTrafficPolicy: Local)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    binary = str(tool) if tool.exists() else shutil.which("kubernetes-validate") or ""
    assert binary, "kubernetes-validate is a test extra: pip install '.[test]'"
    return subprocess.run([binary, "--strict", *map(str, paths)], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_manifests_pass_the_schema_validator() -> None:
    assert len(MANIFESTS) == 3
    out = validate(*MANIFESTS)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("passed") == 8, out.stdout


def test_the_validator_catches_a_mistake(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = (ROOT / "deploy" / "kubernetes" / "deployment-service.yaml").read_text()
    broken.write_text(text.replace("containerPort: 5353", "containerport: 5353", 1))
    assert validate(broken).returncode != 0


def test_the_embedded_mapping_is_a_valid_config(tmp_path: Path) -> None:
    configmap = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "configmap.yaml").read_text())
    mapping = tmp_path / "splitdns.yaml"
    mapping.write_text(configmap["data"]["splitdns.yaml"])
    out = subprocess.run([sys.executable, "-m", "splitdns", "check", "-c", str(mapping)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_both_shapes_keep_the_client_address() -> None:
    docs = {path.name: list(yaml.safe_load_all(path.read_text())) for path in MANIFESTS}
    daemonset = next(d for d in docs["daemonset-hostnetwork.yaml"] if d["kind"] == "DaemonSet")
    assert daemonset["spec"]["template"]["spec"]["hostNetwork"] is True
    service = next(d for d in docs["deployment-service.yaml"] if d["kind"] == "Service")
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    for name, manifest in docs.items():
        for doc in manifest:
            if doc["kind"] in ("DaemonSet", "Deployment"):
                (container,) = doc["spec"]["template"]["spec"]["containers"]
                probe = container["readinessProbe"]["exec"]["command"]
                assert probe[:2] == ["/opt/splitdns/bin/splitdns", "health"], name
