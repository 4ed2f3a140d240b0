"""Row caches: one sharded HDF5 writer and reader (:mod:`.rows`) for every per-image array;
embeddings (:mod:`.embeddings`) and patch tokens (:mod:`.tokens`) on top of it."""
