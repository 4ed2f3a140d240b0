"""Toy ground truth: the factor each head's TextSpan texts name vs the factor a probe finds."""

from cliplens.head_jobs import run_factors
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    out = snakemake.output
    s = run_factors(p.spec, snakemake.input.fit, snakemake.input.test, snakemake.input.textspan,
                    p.roots, p.top, out.csv, out.json, out.png)
    log.info("%s: TextSpan and probe agree on %d of %d heads (%.3f); on %d heads with probe "
             "score >= 0.5: %.3f", p.spec, s["agree"], s["heads"], s["agreement"],
             s["informative_heads"], s["agreement_informative"])
