"""TextSpan and PC explanations of every explained head (JSON, readable text, table)."""

from cliplens.head_jobs import run_textspan
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    out = snakemake.output
    result = run_textspan(p.spec, snakemake.input.fit, snakemake.input.texts, p.cfg, out.json,
                          out.txt, out.csv, out.npz)
    log.info("%s: %d heads explained with %d texts each", p.spec, len(result["heads"]),
             p.cfg["n_texts"])
