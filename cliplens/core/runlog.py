"""Logging for workflow jobs: everything a job prints goes to its Snakemake log file.

``with job_log(path, threads=n):`` sends the root logger, ``print`` and tqdm progress bars
(stderr) to ``path`` as well as to the console, so a killed job leaves a readable record of how
far it got, and gives torch the job's ``threads``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Iterator, TextIO


class _Tee:
    def __init__(self, *streams: TextIO):
        self.streams = streams

    def write(self, data: str) -> int:
        for s in self.streams:
            s.write(data)
            s.flush()
        return len(data)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def job_log(path: str | Path | None, level: int = logging.INFO,
            threads: int | None = None) -> Iterator[logging.Logger]:
    """Tee stdout, stderr and logging into ``path`` (appending) for the duration of the block;
    with ``threads``, torch computes on that many threads (a Snakemake job's ``threads:``)."""
    log = logging.getLogger("cliplens")
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    if path is None:
        logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
        yield log
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as fh:
        out, err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(out, fh), _Tee(err, fh)
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        old_level = root.level
        root.setLevel(level)
        try:
            yield log
        except BaseException:
            log.exception("job failed")
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
            sys.stdout, sys.stderr = out, err
