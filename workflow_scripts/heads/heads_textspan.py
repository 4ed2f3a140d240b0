"""TextSpan and PC explanations of every explained head (JSON, readable text, table, bases)."""

from cliplens.core.runlog import job_log
from cliplens.studies.heads.jobs import run_textspan

with job_log(snakemake.log[0]):
    i, o = snakemake.input, snakemake.output
    run_textspan(**snakemake.params, fit=i.fit, texts=i.texts, out_json=o.json, out_txt=o.txt,
                 out_csv=o.csv, out_npz=o.npz)
