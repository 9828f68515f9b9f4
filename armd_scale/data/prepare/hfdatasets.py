"""`hf:` inputs: documents from anything the Hugging Face `datasets` library loads, streamed.

    hf:<path>[:<config>][@<split>][?data_files=<glob>[,<glob>...]]

`<path>` is what `datasets.load_dataset` takes: a hub dataset name (`allenai/c4:en@train`), a local
dataset folder (data files laid out the way the hub lays them out), or a packaged builder with
`data_files` (`hf:json?data_files=/corpora/*.jsonl.zst`, `hf:parquet?data_files=...`). It is loaded with
`streaming=True`, so rows arrive as the files are read and nothing is converted or cached first.
A folder written by `Dataset.save_to_disk` (it holds `state.json` or `dataset_dict.json`) is opened
with `load_from_disk` instead; its Arrow files are memory-mapped, not read into memory.

The split defaults to `train`; each row's `text_field` is one document, in the dataset's own order.
`datasets` is an optional dependency (`pip install 'armd_scale[hf]'`); the stack itself never asks
for a hub dataset, only a user's `hf:` input does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

from armd_scale.data.errors import DataError

HF_PREFIX = "hf:"
_BATCH = 1000


@dataclass(frozen=True)
class HFSpec:
    path: str
    config: str | None
    split: str
    data_files: list[str] | None


def parse_hf(spec: str) -> HFSpec:
    """`hf:path[:config][@split][?data_files=...]` -> its parts; unknown query keys are an error."""
    body = spec[len(HF_PREFIX) :]
    body, _, query = body.partition("?")
    data_files = None
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "data_files":
            raise DataError(f"input '{spec}': unknown key '{key}' (allowed: data_files)")
        data_files = [v for v in value.split(",") if v]
    body, _, split = body.rpartition("@") if "@" in body else (body, "", "")
    path, _, config = body.rpartition(":") if ":" in body else (body, "", "")
    if not path:
        raise DataError(f"input '{spec}' names no dataset: use hf:<dataset>[:<config>][@<split>]")
    return HFSpec(path, config or None, split or "train", data_files)


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(
            "hf: inputs need the `datasets` package, an optional extra: pip install 'armd_scale[hf]'"
        ) from None
    datasets.disable_progress_bars()
    return datasets


def _saved_to_disk(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json"))


def _open(spec: str, parsed: HFSpec):
    datasets = _import_datasets()
    if _saved_to_disk(parsed.path):
        ds = datasets.load_from_disk(parsed.path)
        if isinstance(ds, datasets.DatasetDict):
            if parsed.split not in ds:
                raise DataError(f"input '{spec}': split '{parsed.split}' not found (it has: {', '.join(ds)})")
            ds = ds[parsed.split]
        return ds
    try:
        return datasets.load_dataset(
            parsed.path, parsed.config, data_files=parsed.data_files, split=parsed.split, streaming=True
        )
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise DataError(f"input '{spec}': datasets.load_dataset could not open it: {e}") from None


def hf_documents(spec: str, text_field: str, warn: bool = True) -> Iterator[str]:
    """The non-blank `text_field` values of the dataset's rows, newline-normalised, in order."""
    from armd_scale.data.prepare.readers import ReadIssues, record_text

    parsed = parse_hf(spec)
    ds = _open(spec, parsed)
    features = getattr(ds, "features", None)
    if features is not None and text_field not in features:
        raise DataError(
            f"input '{spec}' has no column '{text_field}' (it has: {', '.join(features)}); "
            "choose the column with --text-field"
        )
    issues = ReadIssues(spec)
    row = 0
    for batch in ds.select_columns([text_field]).iter(batch_size=_BATCH):
        for value in batch[text_field]:
            row += 1
            text = record_text(value, f"{spec}: row {row}", text_field, issues)
            if text is not None:
                yield text
    if warn:
        issues.report()
