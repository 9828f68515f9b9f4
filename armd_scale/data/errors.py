"""Errors of the data pipeline.

They are separate classes so callers (the trainer, `armd shards --verify`) can tell a bad shard,
which may be skipped, from a mismatch between data and run, which must stop the run.
"""

from __future__ import annotations


class DataError(ValueError):
    """Input data, a tokenizer or a manifest is missing or malformed; the message says which and why."""


class DataMismatchError(DataError):
    """Shards, tokenizer or saved loader state do not belong together; the message shows both values."""


class BadShardError(DataError):
    """A shard (or one chunk of it) is missing, truncated or fails its checksum. `url` names the
    shard, `chunk` the chunk index within it when only a chunk was read, `reason` says why."""

    def __init__(self, url: str, reason: str, chunk: int | None = None) -> None:
        super().__init__(f"bad shard {url}: {reason}")
        self.url = url
        self.reason = reason
        self.chunk = chunk

    def __reduce__(self):  # keep `url`, `reason` and `chunk` when the error crosses a process boundary
        return (type(self), (self.url, self.reason, self.chunk))
