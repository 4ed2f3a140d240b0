"""Profiles: the workflow profile Snakemake always loads holds nothing a machine decides, so the
cluster profile, used by name, is never overridden; a local run with GPUs makes model jobs take
turns by itself."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
SLURM = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())


def test_the_workflow_profile_sets_nothing_a_machine_decides():
    for key in ("resources", "default-resources", "set-resources", "latency-wait", "executor",
                "jobs", "cores", "retries"):
        assert key not in DEFAULT, key


def test_the_workflow_profile_never_overrides_the_cluster_profile():
    """Snakemake lets profiles/default win key by key over --profile slurm: every key it sets,
    the SLURM profile sets to the same value."""
    for key, value in DEFAULT.items():
        assert SLURM.get(key) == value, (key, value, SLURM.get(key))


def test_the_slurm_profile_is_found_by_name(tmp_path):
    """After the README's one step (a link named slurm in Snakemake's profile folder),
    `snakemake --profile slurm` reads profiles/slurm (a dry run plans without submitting)."""
    (tmp_path / "xdg/snakemake").mkdir(parents=True)
    (tmp_path / "xdg/snakemake/slurm").symlink_to(ROOT / "profiles/slurm")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"), HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "results/data/toy/toy.h5", "-s", str(ROOT / "Snakefile"),
         "-d", str(tmp_path / "w"), "--profile", "slurm", "-n", "--configfile",
         str(ROOT / "configs/test.yaml")],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert re.search(r"Using profiles? slurm and workflow specific profile", text), text[:1000]


@pytest.mark.workflow
def test_a_local_run_with_a_gpu_runs_model_jobs_one_at_a_time(tmp_path):
    """With one GPU visible, the two toy trainings claim gpu=1 each and Snakemake, given no
    --resources, limits gpu to the one GPU: the second starts after the first finishes, although
    two cores would let them run side by side."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "results/models/toy/clip-vit",
         "results/models/toy/siglip-32", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
         "--cores", "2", "--configfile", str(ROOT / "configs/test.yaml")],
        capture_output=True, text=True, env=env, timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert re.search(r"Provided resources: gpu=.*\b1\b", text), text[:3000]
    events = re.findall(r"rule train_toy_model:|Finished jobid: \d+ \(Rule: train_toy_model\)",
                        text)
    starts = [e.startswith("rule") for e in events]
    assert starts == [True, False, True, False], events  # start, finish, start, finish
