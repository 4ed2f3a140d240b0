"""Faults, each reproduced: a job killed mid-way leaves nothing that looks done and a rerun
gives the same outputs; damaged files are refused with their path and the way out, which heals
them to the undamaged result; config mistakes fail while the workflow plans."""

import os
import shutil
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


# ---------------------------------------------------------------------------------------------
# Damaged files: each is refused with its path and the way out, and the way out heals it to
# the very result an undamaged run gives.  One small build (configs/test.yaml) is damaged and
# healed in turn.

ZS = "results/zeroshot/toy--clip-vit/toy-colour.json"
RECON = "results/inversion/toy--siglip-32/reconstructor.safetensors"
SHARDS = "results/cache/toy--clip-vit/toy/test/shards"


def smk(workdir, *args, configs=(), timeout=900):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
           "--cores", "2", *args, "--configfile", str(ROOT / "configs/test.yaml"), *configs]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return out.returncode, out.stdout + out.stderr


def logs(workdir, rule):
    return "\n".join(p.read_text() for p in (workdir / "results/logs" / rule).rglob("*.log"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    wd = tmp_path_factory.mktemp("faults")
    rc, out = smk(wd, ZS, RECON)
    assert rc == 0, out[-4000:]
    return wd


@pytest.mark.workflow
# Each fault's other forms (truncated weights, flipped checkpoints, 1e38 and flipped shard bytes)
# are unit tests (tests/core/); here one form of each goes through Snakemake, to the user's rm.
@pytest.mark.parametrize("fault", ["flipped byte"])
def test_damaged_toy_model_weights_are_refused_then_rebuilt(built, fault):
    from tests.corrupt import flip_byte, truncate

    model = built / "results/models/toy/clip-vit"
    weights = model / "open_clip_model.safetensors"
    ref = (built / ZS).read_text()
    (flip_byte if fault == "flipped byte" else truncate)(weights)
    rc, out = smk(built, ZS, "--forcerun", "cache_shard")
    text = out + logs(built, "cache_shard")
    assert rc != 0
    rel = model.relative_to(built)  # as the user sees it: relative to the working directory
    assert f"{rel}/open_clip_model.safetensors is damaged: its SHA-256 is" in text
    assert f"rm -r {rel}\n" in text
    shutil.rmtree(model)  # the way out the message gives: delete, rerun the same command
    rc, out = smk(built, ZS, "--forcerun", "cache_shard")
    assert rc == 0, out[-4000:]
    assert (built / ZS).read_text() == ref  # retrained to the same weights, same accuracy


@pytest.mark.workflow
@pytest.mark.parametrize("fault,message", [("nan", "NaN or infinite values"),
                                           ("truncated", "HDF5 cannot open it")])
def test_a_damaged_cache_shard_is_named_then_rebuilt(built, fault, message):
    from tests.corrupt import flip_byte, rewrite, truncate

    shard = built / SHARDS / "embeddings.1-of-2.h5"
    ref = (built / ZS).read_text()
    if fault in ("nan", "1e38"):
        rewrite(shard, "embeddings", 3, float(fault))  # h5py recomputes the checksum
    elif fault == "flipped byte":
        flip_byte(shard, dataset="embeddings")
    else:
        truncate(shard)
    rc, out = smk(built, ZS, "--forcerun", "zeroshot_eval")
    text = out + logs(built, "zeroshot_eval")
    assert rc != 0
    rel, gathered = shard.relative_to(built), shard.parents[1] / "embeddings.h5"
    assert f"{rel} is damaged" in text and message in text
    assert f"rm -r {rel} {gathered.relative_to(built)}\n" in text
    shard.unlink()  # the way out the message gives: both files, then the same command
    gathered.unlink()
    rc, out = smk(built, ZS, "--forcerun", "zeroshot_eval")
    assert rc == 0, out[-4000:]
    assert (built / ZS).read_text() == ref


@pytest.mark.workflow
@pytest.mark.parametrize("fault", ["truncated"])
def test_a_damaged_checkpoint_heals_to_the_same_reconstructor(built, fault):
    from tests.corrupt import flip_byte, truncate

    ckpt = built / "results/inversion/toy--siglip-32/checkpoints/last.pt"
    ref = (built / RECON).read_bytes()
    (flip_byte if fault == "flipped byte" else truncate)(ckpt)
    rc, out = smk(built, RECON, "--forcerun", "inversion_train")
    assert rc == 0, out[-4000:]
    log = logs(built, "inversion_train")
    assert f"checkpoint {ckpt.relative_to(built)} is damaged" in log and "set aside" in log
    assert "at step 10 of 20" in log  # from the previous good checkpoint
    assert (built / RECON).read_bytes() == ref


# ---------------------------------------------------------------------------------------------
# Config mistakes fail while the workflow plans, before any job, naming the key (or the line).

PLAN_MISTAKES = [
    ("zeroshot: {models: [toy:clip-vt]}", "zeroshot.models[0]: toy model 'clip-vt' is not defined"),
    ("toy: {spurious: {classes: [circle, circle]}}", "toy.spurious.classes: names ['circle']"),
    ("toy_models: {siglip-32: {embed_dim: 48}}", "toy_models.siglip-32.embed_dim"),
    ("toy_models: {clip-vit: {vision: {width: 33}}}", "toy_models.clip-vit.vision"),
    ("heads: {layers: [3]}", "heads.layers: toy:clip-vit: layer 3 is outside"),
    ("inversion: {layer: -9}", "inversion.layer"),
    ("results: /etc/hostname", "results: /etc/hostname exists and is not a directory"),
    ("neurons: {models: [toy:siglip-32]}", "neurons.models[0]: toy:siglip-32 has a siglip tower"),
    ("neurons: {sparse: {k: 500, text_sets: ['builtin:pascal-context']}}",
     "neurons.sparse.k: k = 500 texts per component, but neurons.sparse.text_sets give 59"),
    ("cache:\n  shards: 2\ncache:\n  dtype: float16\n", "line 3: key 'cache' is given again"),
]


@pytest.mark.workflow
@pytest.mark.parametrize("override,message", PLAN_MISTAKES, ids=[m[:24] for _, m in PLAN_MISTAKES])
def test_config_mistakes_fail_at_planning(tmp_path, override, message):
    f = tmp_path / "override.yaml"
    f.write_text(override + "\n")
    rc, out = smk(tmp_path, "-n", configs=[str(f)])
    assert rc != 0 and message in out, out[-3000:]


@pytest.mark.workflow
def test_too_many_shards_are_capped_and_said_so(tmp_path):
    f = tmp_path / "override.yaml"
    f.write_text("cache: {shards: 500}\n")
    rc, out = smk(tmp_path, "-n", configs=[str(f)])
    assert rc == 0, out[-3000:]
    assert "500 shards requested for the 200 rows of toy/test in 64-row batches: capped at 4" in out
    assert "embeddings.3-of-4.h5" in out and "-of-500" not in out
