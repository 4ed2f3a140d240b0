"""A job killed mid-way leaves nothing that looks done, and a rerun gives the same outputs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TARGET = "results/models/toy/clip-vit"
SLOW = {"toy": {"splits": {"train": 600, "val": 100, "test": 100}},
        "toy_models": {"clip-vit": {"train": {"steps": 1000, "batch_size": 64}}}}


def start(workdir, override, *extra):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "snakemake", TARGET, "-s", str(ROOT / "Snakefile"),
           "-d", str(workdir), "--cores", "2",
           *extra, "--configfile", str(ROOT / "configs/test.yaml"), str(override)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, text=True)


@pytest.mark.workflow
def test_killed_training_job_reruns_to_the_uninterrupted_result(tmp_path):
    override = tmp_path / "slow.yaml"
    override.write_text(yaml.safe_dump(SLOW))
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = start(killed, override)
    log = killed / "results/logs/train_toy_model/clip-vit.log"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and "train clip-vit" in log.read_text(errors="replace"):
            time.sleep(1.0)  # well inside the 1000 steps (about 30 s on a fast 2-core machine)
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the job finished before it could be killed:\n" + proc.stdout.read()
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: snakemake and its script
    proc.wait()
    model_dir = killed / TARGET
    assert not (model_dir / "cliplens_model.json").exists(), "a killed job left a finished-looking model"

    # A killed snakemake leaves its directory lock, as a power loss would: unlock, then rerun.
    unlock = start(killed, override, "--unlock")
    assert unlock.wait(timeout=120) == 0, unlock.stdout.read()
    rerun = start(killed, override)
    out_rerun, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out_rerun[-4000:]
    ref = start(clean, override)
    out_ref, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out_ref[-4000:]

    files = sorted(p.relative_to(clean / TARGET) for p in (clean / TARGET).rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(model_dir) for p in model_dir.rglob("*") if p.is_file())
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert weights, files
    for f in weights:
        assert (clean / TARGET / f).read_bytes() == (model_dir / f).read_bytes(), f
