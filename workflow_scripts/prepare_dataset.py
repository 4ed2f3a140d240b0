"""Extract one downloaded archive into its dataset folder (action "extract"), or finish a dataset:
nested archives, cleanup, layout check and the .ready marker (action "finish")."""

from pathlib import Path

from cliplens.data.download import extract_file, finish_dataset
from cliplens.io import write_json_atomic
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    p = snakemake.params
    if p.action == "extract":
        archive = Path(snakemake.input[0])
        tops = extract_file(p.file, archive.parent, p.root, dataset=p.name)
        log.info("extracted %s into %s: %s", archive.name, p.root, [t.name for t in tops])
        write_json_atomic(snakemake.output[0], {"dataset": p.name, "file": p.file,
                                                "entries": [t.name for t in tops]})
    else:
        marker = finish_dataset(p.name, p.root)
        assert Path(marker) == Path(snakemake.output[0]), (marker, snakemake.output[0])
        log.info("dataset %s ready in %s", p.name, p.root)
