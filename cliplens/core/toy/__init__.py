"""The toy world (:mod:`.world`) and the toy models trained on it (:mod:`.models`,
:mod:`.batching`, :mod:`.training`, :mod:`.objectives`, :mod:`.tokenizer`)."""
