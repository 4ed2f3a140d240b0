"""Check a manually placed dataset; fail with the catalog's instructions when it is incomplete."""

from cliplens.data.download import check_manual, mark_manual_ready
from cliplens.data.registry import prepare_manual
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    check_manual(p.name, p.root)  # raises ManualDatasetError with where-to-get-it instructions
    prepare_manual(p.name, p.root)  # e.g. torchvision parses the ImageNet devkit once
    mark_manual_ready(p.name, p.root)
    log.info("manual dataset %s is in place under %s", p.name, p.root)
