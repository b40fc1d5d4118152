"""The Makefile's deploy and load targets: the commands the README documents, run as make runs them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Treat the install stamps as up to date: these tests are about the recipes, not about installing.
UP_TO_DATE = ["-o", ".venv/.installed-dev", "-o", ".venv/.installed-load", "-o", "node_modules/.installed"]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _fake_npx(tmp_path: Path) -> Path:
    """Stands in for npx: prints the environment jsii reads and the arguments it was given."""
    script = tmp_path / "npx"
    script.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                      "print(json.dumps({'jsii': os.environ.get('JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION'), "
                      "'telemetry': os.environ.get('CDK_DISABLE_CLI_TELEMETRY'), 'argv': sys.argv[1:]}))\n")
    script.chmod(0o755)
    return script


def _make(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    return subprocess.run(["make", "-s", "--no-print-directory", *UP_TO_DATE, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_make_deploy_passes_write_keys_intact_and_silences_the_node_eol_warning(tmp_path):
    keys = '{"my-web-key-123":"web","my-server-key-456":"backend"}'
    out = _make("deploy", f"NPX={_fake_npx(tmp_path)}", f"WRITE_KEYS={keys}", "CDK_ARGS=-c createServerless=true")
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen == {"jsii": "20", "telemetry": "true",
                    "argv": ["cdk", "deploy", "--all", "--no-notices", "-c", f"writeKeys={keys}",
                             "-c", "createServerless=true"]}
    assert json.loads(seen["argv"][5].split("=", 1)[1]) == {"my-web-key-123": "web", "my-server-key-456": "backend"}


def test_make_bootstrap_and_deploy_without_keys_use_cdk_json(tmp_path):
    npx = _fake_npx(tmp_path)
    assert json.loads(_make("deploy", f"NPX={npx}").stdout)["argv"] == ["cdk", "deploy", "--all", "--no-notices"]
    bootstrap = json.loads(_make("bootstrap", f"NPX={npx}", "CDK_ARGS=aws://123456789012/eu-west-1").stdout)
    assert bootstrap["argv"] == ["cdk", "bootstrap", "--no-notices", "aws://123456789012/eu-west-1"]
    assert bootstrap["jsii"] == "20"


def test_make_load_runs_locust_headless_against_make_runs_port_and_key():
    out = _make("-n", "load", "PORT=9123", "WRITE_KEY=my-write-key=web", "USERS=5", "DURATION=7")
    assert out.returncode == 0, out.stderr
    command = " ".join(out.stdout.replace("\\\n", " ").split())
    assert command == (".venv/bin/locust -f benchmark/locustfile.py --headless -u 5 -r 5 -t 7s --only-summary "
                       "--host http://127.0.0.1:9123 --write-key my-write-key")
