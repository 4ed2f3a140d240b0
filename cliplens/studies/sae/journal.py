"""An append-only JSONL journal of interpretations that a killed job cannot corrupt or repeat.

Each answer is one JSON object on one line, keyed by :data:`KEY` (feature, language, prompt
hash, model, interpreter).  A row is written -- line, flush, fsync -- as soon as its answer
arrives, under a lock (answers arrive from several threads), and only when its key is new: a
rerun asks only for the keys the file lacks and never writes one twice.  A job killed in the
middle of a write leaves at most one unterminated last line; it is cut off when the journal is
next opened (that answer is asked again), so a kill loses at most the requests in flight.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping

from ...core.io import CorruptFileError

log = logging.getLogger("cliplens")

KEY = ("feature", "language", "prompt_hash", "model", "interpreter")


def row_key(row: Mapping[str, Any]) -> tuple:
    """The journal key of a row or request (:data:`KEY`)."""
    return tuple(row[k] for k in KEY)


class Journal:
    """The rows of ``path`` (created when missing), by key; :meth:`append` adds new ones."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.rows: dict[tuple, dict[str, Any]] = {}
        self._read()
        self._fh = open(self.path, "a", encoding="utf-8")

    def _read(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # an unterminated last line: a write cut short by a kill
            log.warning("%s: dropping an unfinished last line of %d bytes (asked again)",
                        self.path, len(data) - end)
            with open(self.path, "r+b") as fh:
                fh.truncate(end)
                fh.flush()
                os.fsync(fh.fileno())
        for i, raw in enumerate(data[:end].split(b"\n"), 1):
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key = row_key(row)
            except (ValueError, KeyError, TypeError) as e:
                raise CorruptFileError(f"{self.path}: line {i} is not a journal row ({e}); "
                                       f"move the file away to start the journal again") from None
            self.rows.setdefault(key, row)

    def missing(self, requests: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The requests whose key has no row yet, in order, each once."""
        seen, out = set(self.rows), []
        for r in requests:
            k = row_key(r)
            if k not in seen:
                seen.add(k)
                out.append(r)
        return out

    def append(self, row: Mapping[str, Any]) -> bool:
        """Write ``row`` durably unless its key has one already; whether it was written."""
        key = row_key(row)
        line = json.dumps(dict(row), ensure_ascii=True, sort_keys=True) + "\n"
        with self._lock:
            if key in self.rows:
                return False
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self.rows[key] = dict(row)
            return True

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
