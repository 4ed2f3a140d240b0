"""The workflow's source is lint-clean and formatted (snakemake --lint, snakefmt --check)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_snakemake_lint_reports_nothing(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
         "--lint", "--cores", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "Lints for" not in text, text


def test_snakefmt_check_passes():
    files = [ROOT / "Snakefile", *sorted((ROOT / "rules").rglob("*.smk"))]
    out = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
