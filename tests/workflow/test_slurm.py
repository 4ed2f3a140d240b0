"""The SLURM profile on a real scheduler: a one-node cluster on loopback (tests/slurm_cluster.py).

Jobs go through snakemake-executor-plugin-slurm with profiles/slurm unchanged, installed as the
README says (a link named ``slurm`` in Snakemake's profile folder, here ``$XDG_CONFIG_HOME``) and
used as users type it, ``snakemake --profile slurm``, plus what a cluster without accounting
needs (squeue for job status) and what makes a test fast (status checks every 2 s).  Proof that a job ran under SLURM: the executor reports the SLURM job id it
got from sbatch; the controller knows that job as COMPLETED, with the profile's resources and
the rule's name in its comment; SLURM wrote the job's log file; and the job itself saw that
SLURM_JOB_ID (and HDF5_USE_FILE_LOCKING=FALSE).

The node declares two fake GPUs and enough CPUs and memory for every request of the profile
(SLURM does not enforce them here), so GPU rules are submitted exactly as on a GPU cluster.
Needs root; installs the Debian packages if missing; skips with the reason where it cannot.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file as load_safetensors

from .slurm_cluster import SlurmUnavailable, one_node_cluster

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "profiles" / "slurm"
GPUS = 2  # fake GPUs on the test node: two GPU jobs may run side by side

pytestmark = pytest.mark.slurm

# What a cluster without accounting needs (squeue; MinJobAge of the test cluster is an hour), what
# makes a one-node test fast (status checks every 2 s), and what the assertions read (kept SLURM
# logs; --verbose makes the job step print its environment into them).
SLURM_ARGS = [
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "2",
    "--seconds-between-status-checks", "2",
    "--slurm-keep-successful-logs",
    "--verbose",
]


def profile():
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def _node_size():
    """CPUs and memory the node must declare so that every request of the profile fits."""
    prof = profile()
    requests = [prof.get("default-resources", {}), *prof.get("set-resources", {}).values()]
    cpus_per_gpu = max(r.get("cpus_per_gpu", 1) for r in requests)
    mem_mb = max(r.get("mem_mb", 0) for r in requests)
    with open("/proc/meminfo") as fh:
        real_mb = int(fh.readline().split()[1]) // 1024
    return max(os.cpu_count() or 2, GPUS * cpus_per_gpu), max(real_mb, mem_mb)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    global _CONFIG_HOME
    _CONFIG_HOME = install_profile(tmp_path_factory.mktemp("xdg"))
    cpus, mem_mb = _node_size()
    try:
        ctx = one_node_cluster(cpus=cpus, memory_mb=mem_mb, gpus=GPUS)
        c = ctx.__enter__()
    except SlurmUnavailable as err:
        pytest.skip(f"no SLURM test cluster: {err}")
    try:
        yield c
    finally:
        ctx.__exit__(None, None, None)


# The executor polls SLURM at intervals that grow by 10 s while no job finishes (up to 180 s):
# right for a cluster, slow for a test whose jobs take seconds.  The SLURM runs of this file
# therefore start Snakemake through this wrapper, which only caps that interval at 2 s;
# submission, status queries and everything else are the plugin's own.
POLL_EVERY_2S = """
import snakemake_executor_plugin_slurm as plugin
from snakemake.cli import main

_check = plugin.Executor.check_active_jobs

async def check_active_jobs(self, active_jobs):
    async for job in _check(self, active_jobs):
        yield job
    self.next_seconds_between_status_checks = min(self.next_seconds_between_status_checks, 2)

plugin.Executor.check_active_jobs = check_active_jobs
main()
"""


def _command(workdir, args, snakefile, slurm):
    entry = ["-c", POLL_EVERY_2S] if slurm else ["-m", "snakemake"]
    slurm_args = ["--profile", "slurm", *SLURM_ARGS] if slurm else []
    return [sys.executable, *entry, "-s", str(snakefile), "-d", str(workdir), *slurm_args, *args]


def install_profile(config_home):
    """The README's one step: link profiles/slurm as the named profile ``slurm``."""
    (config_home / "snakemake").mkdir(parents=True, exist_ok=True)
    link = config_home / "snakemake" / "slurm"
    if not link.exists():
        link.symlink_to(PROFILE, target_is_directory=True)
    return config_home


_CONFIG_HOME = None


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("HDF5_USE_FILE_LOCKING", None)  # the workflow must set it, not the caller
    if _CONFIG_HOME is not None:
        env["XDG_CONFIG_HOME"] = str(_CONFIG_HOME)
    return env


def snakemake(workdir, *args, snakefile=ROOT / "Snakefile", slurm=False, timeout=600):
    """Run Snakemake to the end (locally, or through SLURM with the profile)."""
    return subprocess.run(_command(workdir, args, snakefile, slurm), capture_output=True,
                          text=True, env=_env(), timeout=timeout, stdin=subprocess.DEVNULL,
                          cwd=workdir)


def slurm_snakemake(workdir, *args, **kw):
    return snakemake(workdir, *args, slurm=True, **kw)


def submissions(text):
    """{snakemake job id: (SLURM job id, SLURM log file)} from the executor's messages."""
    found = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.",
                       text)
    return {int(j): (s, Path(log)) for j, s, log in found}


def finished(text):
    """{snakemake job id: rule} of every job that finished."""
    return {int(j): rule for j, rule in re.findall(r"Finished jobid: (\d+) \(Rule: (\w+)\)", text)}


def assert_went_through_slurm(cluster, out, local_rules=("all",)):
    """Every finished job (except rules without a command) was submitted, SLURM completed it,
    wrote its log, and the job saw its own SLURM_JOB_ID and HDF5_USE_FILE_LOCKING=FALSE.
    Returns {snakemake job id: (rule, scontrol record)}."""
    text = out.stdout + out.stderr
    done, sent = finished(text), submissions(text)
    remote = {j: r for j, r in done.items() if r not in local_rules}
    assert remote, text[-3000:]
    assert set(sent) == set(remote), (sorted(sent), remote)
    records = {}
    for j, rule in remote.items():
        slurm_id, log = sent[j]
        rec = cluster.job(slurm_id)
        assert rec.get("JobState") == "COMPLETED", rec
        assert rec.get("Comment", "").startswith(f"rule_{rule}"), rec
        assert log.is_file() and Path(rec["StdOut"]) == log, (log, rec.get("StdOut"))
        job_env = log.read_text(errors="replace")  # the job step's own environment (--verbose)
        assert f"'SLURM_JOB_ID': '{slurm_id}'" in job_env, f"{log}:\n{job_env[-2000:]}"
        assert "'HDF5_USE_FILE_LOCKING': 'FALSE'" in job_env, f"{log}:\n{job_env[-2000:]}"
        records[j] = (rule, rec)
    return records


TINY_SNAKEFILE = """
import os

# The same line as the workflow's Snakefile: jobs inherit it (sbatch --export=ALL).
os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")

rule all:
    input: "table.txt"

rule cache_shard:  # named like the workflow's extraction rule: gets its profile resources
    output: "shard.txt"
    threads: 1
    resources: gpu=1
    shell: "echo $SLURM_JOB_ID $HDF5_USE_FILE_LOCKING ${{CUDA_VISIBLE_DEVICES:-none}} > {output}"

rule table:
    input: "shard.txt"
    output: "table.txt"
    shell: "cat {input} > {output}; echo $SLURM_JOB_ID $HDF5_USE_FILE_LOCKING >> {output}"
"""


def test_profile_submits_jobs_with_its_resources(cluster, tmp_path):
    """A two-rule workflow through profiles/slurm: each job is a SLURM job with the profile's
    resources (a GPU, cpus_per_gpu, mem_mb, runtime) and sees SLURM_JOB_ID and
    HDF5_USE_FILE_LOCKING=FALSE."""
    (tmp_path / "Snakefile").write_text(TINY_SNAKEFILE)
    out = slurm_snakemake(tmp_path, snakefile=tmp_path / "Snakefile", timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[-6000:] + cluster.logs()
    records = assert_went_through_slurm(cluster, out)
    by_rule = {rule: rec for rule, rec in records.values()}
    assert set(by_rule) == {"cache_shard", "table"}

    prof = profile()
    shard, table = by_rule["cache_shard"], by_rule["table"]
    want = prof["set-resources"]["cache_shard"]
    assert shard["TresPerJob"] == "gres:gpu:1"
    assert shard["CpusPerTres"] == f"gres:gpu:{want['cpus_per_gpu']}"
    assert shard["MinMemoryNode"] == f"{want['mem_mb']}M"
    assert shard["TimeLimit"] == time.strftime("%H:%M:%S", time.gmtime(want["runtime"] * 60))
    default = prof["default-resources"]
    assert "gpu" not in table.get("TresPerJob", "")
    assert table["MinMemoryNode"] == f"{default['mem_mb']}M"
    assert table["TimeLimit"] == time.strftime("%H:%M:%S", time.gmtime(default["runtime"] * 60))

    # what the jobs' shell commands saw
    shard_line, table_line = (tmp_path / "table.txt").read_text().splitlines()
    shard_id, shard_lock, cuda = shard_line.split()
    assert shard_id == shard["JobId"] and shard_lock == "FALSE"
    assert cuda != "none"  # SLURM gave the job a (fake) GPU
    assert table_line.split() == [table["JobId"], "FALSE"]


# ---------------------------------------------------------------- the real workflow, tiny config

CONFIG = str(ROOT / "configs" / "test.yaml")
# One toy model from training to its embeddings cache and one zero-shot score: every kind of job
# of the tiny config (generation, training and extraction on a GPU, gather, scoring) in five
# SLURM rounds.  The whole zeroshot.csv needs both toy models and two more rounds.
TARGETS = ["results/cache/toy--clip-vit/toy/test/embeddings.h5",
           "results/zeroshot/toy--clip-vit/toy-colour.json"]


def _h5_contents(path):
    """{name: array} of every dataset and {name: attrs} of every object of an HDF5 file."""
    arrays, attrs = {}, {}
    with h5py.File(path, "r") as f:
        attrs["/"] = dict(f.attrs)

        def visit(name, obj):
            attrs[name] = dict(obj.attrs)
            if isinstance(obj, h5py.Dataset):
                arrays[name] = obj[()]
        f.visititems(visit)
    return arrays, attrs


def _without_timings(obj):
    """JSON without wall-clock measurements (keys ending in _seconds), which differ run to run."""
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if not k.endswith("_seconds")}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def assert_same_results(a, b):
    """The result files of runs ``a`` and ``b`` are the same set with equal contents: HDF5
    datasets array by array and attributes (provenance), safetensors tensor by tensor, CSV and
    other text exactly, JSON up to timings.  Logs and benchmarks are not compared.
    Returns the number of files compared."""
    def files(root):
        return {p.relative_to(root) for p in (root / "results").rglob("*") if p.is_file()
                and p.relative_to(root).parts[1] not in ("logs", "benchmarks")}
    fa, fb = files(a), files(b)
    assert fa == fb, sorted(fa ^ fb)
    compared = 0
    for rel in sorted(fa):
        pa, pb = a / rel, b / rel
        if rel.suffix == ".h5":
            (xa, ta), (xb, tb) = _h5_contents(pa), _h5_contents(pb)
            assert xa.keys() == xb.keys(), rel
            for k in xa:
                np.testing.assert_array_equal(xa[k], xb[k], err_msg=f"{rel}:{k}")
            assert repr(ta) == repr(tb), rel
        elif rel.suffix == ".safetensors":
            sa, sb = load_safetensors(pa), load_safetensors(pb)
            assert sa.keys() == sb.keys(), rel
            for k in sa:
                np.testing.assert_array_equal(sa[k], sb[k], err_msg=f"{rel}:{k}")
        elif rel.suffix == ".json":
            assert _without_timings(json.loads(pa.read_text())) == \
                _without_timings(json.loads(pb.read_text())), rel
        elif rel.suffix in (".csv", ".tsv", ".txt", ".yaml"):
            assert pa.read_text() == pb.read_text(), rel
        else:
            continue
        compared += 1
    return compared


@pytest.mark.workflow
def test_tiny_config_through_slurm_equals_local_run(cluster, tmp_path):
    """The tiny config's jobs through profiles/slurm: every job is a SLURM job (GPU rules with a
    GPU), and the results equal a local run's."""
    local, remote = tmp_path / "local", tmp_path / "slurm"
    local.mkdir()
    remote.mkdir()
    # the local reference runs meanwhile: the SLURM run mostly waits on the scheduler
    with open(tmp_path / "local.log", "w+") as log:
        ref = subprocess.Popen(_command(local, (*TARGETS, "--cores", "2", "--configfile", CONFIG),
                                        ROOT / "Snakefile", slurm=False),
                               stdout=log, stderr=subprocess.STDOUT, env=_env(),
                               stdin=subprocess.DEVNULL, cwd=local)
        try:
            out = slurm_snakemake(remote, *TARGETS, "--configfile", CONFIG)
            ref.wait(timeout=600)
        finally:
            if ref.poll() is None:
                ref.kill()
                ref.wait()
        log.seek(0)
        assert ref.returncode == 0, log.read()[-6000:]
    assert out.returncode == 0, (out.stdout + out.stderr)[-8000:] + cluster.logs()
    text = out.stdout + out.stderr
    assert re.search(r"Using profiles? slurm and workflow specific profile", text), text[:2000]
    # no local-only setting reaches the cluster run: no global gpu limit (SLURM hands out GPUs)
    provided = [line for line in text.splitlines() if line.startswith("Provided resources:")]
    assert not any("gpu" in line for line in provided), provided
    records = assert_went_through_slurm(cluster, out)
    rules = {rule for rule, _ in records.values()}
    assert {"toy_world", "train_toy_model", "cache_shard", "cache_gather", "zeroshot_eval"} <= rules
    shards = [rec for rule, rec in records.values() if rule == "cache_shard"]
    assert len(shards) == 2 and all(r.get("TresPerJob") == "gres:gpu:1" for r in shards)

    assert assert_same_results(local, remote) >= 6  # toy.h5, 2 shards, cache, model, score
