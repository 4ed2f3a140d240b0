"""Download one catalog file: resumable, checked against size and SHA-256/MD5, renamed atomically."""

from cliplens.data.download import download
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    log.info("fetching %s -> %s", p.url, snakemake.output[0])
    download(p.url, snakemake.output[0], sha256=p.sha256, md5=p.md5, size=p.size,
             progress=True, mirrors=p.mirrors)
