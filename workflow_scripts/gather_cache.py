"""Join the shards of one embeddings cache into a file of HDF5 virtual datasets."""

from cliplens.cache import gather_shards
from cliplens.runlog import job_log

with job_log(snakemake.log[0]) as log:
    prov = gather_shards(list(snakemake.input), snakemake.output[0])
    log.info("gathered %d shards: %d rows of %s on %s/%s", len(snakemake.input), prov["rows"],
             prov.get("model"), prov.get("dataset"), prov.get("split"))
