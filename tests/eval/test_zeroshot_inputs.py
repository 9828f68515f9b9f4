"""The zero-shot inputs are fingerprinted and checked against the published sets (eval/zeroshot_inputs.py).

Synthetic files stand in for the published ones (their row counts are the published counts, their
text is not), so every rule is exercised without downloading anything; the real tokenized WikiText-2
and the two LM1B shards of ../shared/corpora are checked where that folder exists.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from armd_scale.cli import main
from armd_scale.data.errors import DataError
from armd_scale.eval.zeroshot_data import BENCHMARKS
from armd_scale.eval.zeroshot_inputs import (
    EXPECTED_SPLITS,
    KNOWN_INPUTS,
    PUBLISHED,
    fingerprint,
    fingerprint_rows,
    verify,
)

SHARED = Path(os.environ.get("ARMD_SHARED_CORPORA", Path(__file__).resolve().parents[3] / "shared" / "corpora"))
WT2_TOKENS = SHARED / "wikitext-2" / "valid.txt"
LM1B_DEV = SHARED / "lm1b" / "1b_benchmark.dev.tokens"


def _fp(task: str, *paths: Path):
    return fingerprint([str(p) for p in paths], task, BENCHMARKS[task])


def _raw_wikitext(path: Path, rows: int, extra: str = "") -> Path:
    """A WikiText-format .raw file of `rows` rows: a heading, blank lines, text (no <unk> unless `extra` has one)."""
    lines = [
        " = Heading = \n" if i % 5 == 0 else (" \n" if i % 5 == 1 else f" line {i} , the 2 @-@ year run {extra}\n")
        for i in range(rows)
    ]
    path.write_text("".join(lines))
    return path


def test_the_split_table_covers_every_task_and_protocol():
    for task, splits in EXPECTED_SPLITS.items():
        assert set(splits) == {"sedd", "mdlm", "bd3lm"}
        assert splits["bd3lm"] == splits["mdlm"]  # bd3lms' dataloader keeps MDLM's split rule
        assert {s.split for s in PUBLISHED[task]} >= set(splits.values())
    assert EXPECTED_SPLITS["wikitext2"] == {"sedd": "train", "mdlm": "validation", "bd3lm": "validation"}
    assert EXPECTED_SPLITS["lm1b"]["mdlm"] == EXPECTED_SPLITS["lambada"]["sedd"] == "test"
    assert {"lambada", "wikitext2", "wikitext103", "ptb", "lm1b"} <= set(BENCHMARKS) <= set(EXPECTED_SPLITS)
    for sets in PUBLISHED.values():
        for s in sets:
            assert s.rows > 0 and s.rows_source
            assert s.file_sha256 is None or len(s.file_sha256) == 64
            assert s.file_md5 is None or len(s.file_md5) == 32
            assert (s.file_sha256 is None and s.file_md5 is None) or s.digest_source


def test_one_content_hash_for_raw_jsonl_and_parquet(tmp_path):
    raw = _raw_wikitext(tmp_path / "wiki.valid.raw", 12)
    rows = [line + "\n" if line.strip() else "" for line in raw.read_text().split("\n")[:-1]]
    jsonl = tmp_path / "valid.jsonl"
    jsonl.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    by_raw, by_jsonl = _fp("wikitext2", raw), _fp("wikitext2", jsonl)
    assert by_raw.content_sha256 == by_jsonl.content_sha256 == fingerprint_rows(rows)[0]
    assert by_raw.rows == by_jsonl.rows == 12 and by_raw.files[0]["sha256"] != by_jsonl.files[0]["sha256"]
    assert by_raw.files[0]["sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    # the encoding is unambiguous: moving a character across a row boundary changes the hash
    assert fingerprint_rows(["ab", "c"])[0] != fingerprint_rows(["a", "bc"])[0]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": rows}), str(tmp_path / "validation-00000-of-00001.parquet"))
    assert _fp("wikitext2", tmp_path / "validation-00000-of-00001.parquet").content_sha256 == by_raw.content_sha256


def test_tokenized_wikitext_is_refused_naming_the_raw_file(tmp_path):
    tokens = _raw_wikitext(tmp_path / "valid.txt", 10, extra="<unk> ,")
    fp = _fp("wikitext2", tokens)
    with pytest.raises(DataError, match=r"6 '<unk>' tokens.*expected wiki\.valid\.raw.*wikitext-2-raw-v1") as e:
        verify("wikitext2", "mdlm", fp)
    assert "--allow-unverified" in str(e.value) and str(tokens) in str(e.value)
    with pytest.raises(DataError, match=r"expected wiki\.test\.raw.*wikitext-103-raw-v1"):
        verify("wikitext103", "sedd", _fp("wikitext103", tokens))
    check = verify("wikitext2", "mdlm", fp, allow_unverified=True)
    assert not check.verified and check.label.startswith("unverified: the rows hold 6 '<unk>' tokens")


def test_real_tokenized_wikitext2_is_refused():
    if not WT2_TOKENS.is_file():
        pytest.skip(f"{WT2_TOKENS} is absent (a clone without ../shared/corpora)")
    fp = _fp("wikitext2", WT2_TOKENS)
    assert (fp.rows, fp.unk) == (3760, 11718)  # the published validation row count, the SOURCE.md <unk> count
    assert fp.content_sha256 == KNOWN_INPUTS[0].content_sha256 and fp.files[0]["sha256"] == KNOWN_INPUTS[0].file_sha256
    with pytest.raises(
        DataError, match=r"tokenized WikiText-2 validation file.*11,718 '<unk>'.*expected wiki\.valid\.raw"
    ):
        verify("wikitext2", "mdlm", fp)
    # under sedd the expected file is the train split; the message also names the raw validation file
    with pytest.raises(DataError, match=r"raw counterpart: wiki\.valid\.raw.*expected wiki\.train\.raw"):
        verify("wikitext2", "sedd", fp)


def test_a_raw_file_is_verified_by_its_rows_and_the_label_says_which_split(tmp_path):
    valid = _fp("wikitext2", _raw_wikitext(tmp_path / "wiki.valid.raw", 3760))
    check = verify("wikitext2", "mdlm", valid)
    assert check.verified and check.label == "validation, 3,760 rows as published; no digest recorded"
    assert verify("wikitext103", "bd3lm", _fp("wikitext103", tmp_path / "wiki.valid.raw")).verified
    test = _fp("wikitext103", _raw_wikitext(tmp_path / "wiki.test.raw", 4358))
    assert verify("wikitext103", "sedd", test).label == "test, 4,358 rows as published; no digest recorded"
    # another split of the same benchmark: both named
    with pytest.raises(
        DataError,
        match=r"this is the validation split \(wiki\.valid\.raw\), but protocol sedd "
        r"evaluates the train split: expected wiki\.train\.raw",
    ):
        verify("wikitext2", "sedd", valid)
    with pytest.raises(
        DataError, match=r"the test split \(wiki\.test\.raw\), but protocol mdlm evaluates the validation"
    ):
        verify("wikitext103", "mdlm", test)


def test_a_wrong_row_count_is_refused_or_scored_as_unverified(tmp_path):
    fp = _fp("wikitext2", _raw_wikitext(tmp_path / "wiki.valid.raw", 3759))
    with pytest.raises(DataError, match=r"3,759 rows .* match no published set: expected wiki\.valid\.raw.*3,760 rows"):
        verify("wikitext2", "mdlm", fp)
    check = verify("wikitext2", "mdlm", fp, allow_unverified=True)
    assert not check.verified and check.matched is None
    assert check.label.startswith("unverified: 3,759 rows") and "expected wiki.valid.raw" in check.label


def test_ptb_by_its_published_digest_or_its_rows(tmp_path, monkeypatch):
    ptb = tmp_path / "ptb.test.txt"
    ptb.write_text("".join(f" the <unk> rose N % in {i} \n" for i in range(3761)))
    fp = _fp("ptb", ptb)
    # same name as the published file, other bytes: refused, naming both digests' source
    with pytest.raises(DataError, match=r"named like the published ptb\.test\.txt but its bytes differ.*torchtext"):
        verify("ptb", "sedd", fp)
    # the published digest (stood in for by this file's own): verified by it, whatever the name
    published = [
        dataclasses.replace(s, file_sha256=fp.files[0]["sha256"]) if s.split == "test" else s for s in PUBLISHED["ptb"]
    ]
    monkeypatch.setitem(PUBLISHED, "ptb", tuple(published))
    assert verify("ptb", "sedd", fp).label == "test, file sha256 as published"
    with pytest.raises(
        DataError, match=r"this is the test split \(ptb\.test\.txt\), but protocol mdlm evaluates the validation"
    ):
        verify("ptb", "mdlm", fp)
    monkeypatch.undo()
    # a conversion (another name and format) with the published rows: accepted, and the label says how
    conv = tmp_path / "ptb_test.jsonl"
    conv.write_text("".join(json.dumps({"sentence": f"the <unk> rose N % in {i}"}) + "\n" for i in range(3761)))
    label = verify("ptb", "sedd", _fp("ptb", conv)).label
    assert label.startswith("test, 3,761 rows as published; not the published file's bytes")


def test_plain_text_lambada_is_refused(tmp_path):
    text = tmp_path / "lambada_test.txt"
    text.write_text("".join(f"passage {i} ends with a word\n" for i in range(5153)))
    with pytest.raises(DataError, match=r"plain-text LAMBADA.*expected lambada_test\.jsonl.*openaipublic"):
        verify("lambada", "sedd", _fp("lambada", text))
    records = tmp_path / "lambada.jsonl"  # a conversion with the published passages count
    records.write_text("".join(json.dumps({"text": f"passage {i} ends with a word"}) + "\n" for i in range(5153)))
    assert verify("lambada", "mdlm", _fp("lambada", records)).label.startswith("test, 5,153 rows as published")
    records.write_text("".join(json.dumps({"text": f"passage {i}"}) + "\n" for i in range(5000)))
    with pytest.raises(DataError, match=r"5,000 rows .*expected lambada_test\.jsonl.*5,153 rows"):
        verify("lambada", "mdlm", _fp("lambada", records))


def test_a_partial_lm1b_is_refused(tmp_path):
    shard = tmp_path / "news.en.heldout-00000-of-00050"
    shard.write_text("The shard 's first sentence .\nA second one !\n" * 50)
    with pytest.raises(DataError, match=r"100 rows are part of the split only.*all 50 shards.*306,688 rows"):
        verify("lm1b", "sedd", _fp("lm1b", shard))
    assert verify("lm1b", "mdlm", _fp("lm1b", shard), allow_unverified=True).label.startswith("unverified: 100 rows")


def test_the_real_two_lm1b_shards_are_refused_as_partial():
    if not LM1B_DEV.is_file():
        pytest.skip(f"{LM1B_DEV} is absent (a clone without ../shared/corpora)")
    fp = _fp("lm1b", LM1B_DEV)
    assert fp.rows == 12216 and fp.content_sha256 == KNOWN_INPUTS[1].content_sha256
    with pytest.raises(
        DataError, match=r"00010 and -00011-of-00050 .*2 of the 50 shards.*news\.en\.heldout-000\{00\.\.49\}"
    ):
        verify("lm1b", "sedd", fp)
    check = verify("lm1b", "sedd", fp, allow_unverified=True)
    assert not check.verified and "2 of the 50 shards" in check.label


def test_cli_refuses_an_unverified_input_and_reports_fingerprints(text_run, tmp_path, capsys):
    tokens = _raw_wikitext(tmp_path / "valid.txt", 10, extra="<unk>")
    args = ["eval", "zeroshot", "--task", "wikitext2", "--data", str(tokens)]
    assert main([*args, "--checkpoint", str(text_run.dir), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "armd eval zeroshot: error: --task wikitext2 --data " in err
    assert "6 '<unk>' tokens" in err and "expected wiki.train.raw" in err and "--allow-unverified" in err
    assert main([*args, "--fingerprint-only", "--protocol", "mdlm"]) == 0
    doc = json.loads(capsys.readouterr().out)
    entry = doc["inputs"][0]
    assert doc["protocol"] == "mdlm" and entry["verified"] is False and entry["fingerprint"]["rows"] == 10
    assert entry["fingerprint"]["files"][0]["sha256"] == hashlib.sha256(tokens.read_bytes()).hexdigest()
    assert main(args) == 2 and "--checkpoint is required" in capsys.readouterr().err
