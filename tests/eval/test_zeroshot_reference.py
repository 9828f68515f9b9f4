"""armd eval zeroshot against the reference transcription of the published code (zeroshot_reference.py).

- every detokenizer, row by row, on a synthetic set that makes every published rule fire and on real
  text (../shared/corpora, skipped with a reason where absent);
- the blocks of `wrap_blocks` for the sedd, mdlm and bd3lm layouts and num_proc 1, 2, 3 on several
  thousand rows, with a GPT-2-format byte-level BPE (vocab.json + merges.txt, `<|endoftext|>`)
  trained here and opened through the package's own tokenizer loading;
- the 1000-row batches of contiguous shards against what `datasets.map(batched=True, num_proc=N)`
  really hands its function (when `datasets` is installed).
Nothing is downloaded.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from armd_scale.data.tokenizers.load import load_tokenizer
from armd_scale.eval.zeroshot_blocks import PROTOCOLS, join_groups, shard_bounds, wrap_blocks
from armd_scale.eval.zeroshot_data import BENCHMARKS, read_rows

from . import zeroshot_reference as ref

SHARED = Path(__file__).resolve().parents[3] / "shared" / "corpora"
BLOCK_LEN = 48
ROWS = 3500  # 3 shards of 1167/1167/1166 rows: a full and a short 1000-row batch in each

# Fragments in each benchmark's own tokenization, chosen so that every rule of every published
# detokenizer changes some row (test_synthetic_rows_fire_every_rule checks it).
WIKI_FRAGMENTS = (
    "the players ' union",
    "/' 5/",
    "2 @-@ year",
    "1 @,@ 000",
    "3 @.@ 5",
    "as follows : a",
    "one ; two",
    "ended . Then",
    "wow ! yes",
    "why ? because",
    "red , green",
    "( approx . )",
    "[ citation ]",
    "{ braces }",
    '" quoted words "',
    "' single quoted '",
    "= = = = Deep = = = =",
    "= = = Sub = = =",
    "= = Section = =",
    "40 ° C",
    "N men",
    "the game 's story",
    "Valkyria Chronicles",
)
PTB_FRAGMENTS = (
    "the company 's shares",
    "the boys ' toys",
    "it did n't",
    "a \n b",
    "1\\/2",
    "rose N N N N N N N N N N N N percent",
    "cost $ N",
    "no. # N",
    "<unk> said",
    "the market",
)
LM1B_FRAGMENTS = (
    "see http : / / www.x.com",
    "or https : / / y.org",
    "he 's here",
    "Mr Smith . He",
    "ok ? yes",
    "great ! fine",
    "a , b",
    "note : c",
    "x ; y",
    "and / or",
    '" a quote "',
    "' single '",
    "( aside )",
    "[ bracket ]",
    "$ 5",
    "£ 3",
)
LM1B_ENDINGS = (" stop .", " really ?", " wow !", "")
LAMBADA_FRAGMENTS = ("\u201cHello,\u201d she said.", "He left.", "\u201cWhy?\u201d", "  padded  ")


def _synthetic_rows(task: str, count: int, seed: int = 0) -> list[str]:
    rng = random.Random(f"{task}-{seed}")
    rows = []
    for _ in range(count):
        if task in ("wikitext2", "wikitext103"):
            if rng.random() < 0.25:
                rows.append("")
            else:
                rows.append(" " + " ".join(rng.choices(WIKI_FRAGMENTS, k=rng.randint(1, 8))) + " \n")
        elif task == "ptb":
            rows.append(" ".join(rng.choices(PTB_FRAGMENTS, k=rng.randint(0, 6))))
        elif task == "lm1b":
            rows.append(" ".join(rng.choices(LM1B_FRAGMENTS, k=rng.randint(1, 5))) + rng.choice(LM1B_ENDINGS))
        elif task == "lambada":
            rows.append(" ".join(rng.choices(LAMBADA_FRAGMENTS, k=rng.randint(1, 4))))
        elif task == "ag_news":
            rows.append(" ".join(rng.choices(LM1B_FRAGMENTS + PTB_FRAGMENTS, k=rng.randint(1, 6))))
        else:  # pubmed, arxiv: paragraphs joined with line breaks, as the builder joins article_text
            paragraphs = [
                rng.choice(("", " "))
                + " ".join(rng.choices(WIKI_FRAGMENTS + LM1B_FRAGMENTS, k=rng.randint(1, 6)))
                + rng.choice(LM1B_ENDINGS)
                for _ in range(rng.randint(1, 4))
            ]
            rows.append("\n".join(paragraphs))
    return rows


def _shared_rows() -> dict[str, list[str]]:
    """Real text as each benchmark's rows: WikiText-2 validation lines (the wikitext builder's rule),
    LM1B held-out sentences (stripped lines), Jane Austen paragraphs for the rest."""
    wt2, lm1b, austen = (
        SHARED / "wikitext-2" / "valid.txt",
        SHARED / "lm1b" / "1b_benchmark.dev.tokens",
        SHARED / "janeausten" / "emma.txt",
    )
    if not all(p.is_file() for p in (wt2, lm1b, austen)):
        pytest.skip(f"{SHARED} lacks wikitext-2/valid.txt, lm1b/1b_benchmark.dev.tokens or janeausten/emma.txt")
    wiki_lines = wt2.read_text(encoding="utf-8").split("\n")[:-1]
    wiki = [line + "\n" if line.strip() else "" for line in wiki_lines][:ROWS]
    news = [line.strip() for line in lm1b.read_text(encoding="utf-8").split("\n")[:-1]][:ROWS]
    paragraphs = [p.replace("\n", " ").strip() for p in austen.read_text(encoding="utf-8").split("\n\n")]
    paragraphs = [p for p in paragraphs if p][:ROWS]
    articles = ["\n".join(paragraphs[i : i + 3]) for i in range(0, len(paragraphs), 3)]
    return {
        "wikitext2": wiki,
        "wikitext103": wiki,
        "ptb": [line.lower() for line in news],
        "lm1b": news,
        "lambada": paragraphs,
        "ag_news": paragraphs,
        "pubmed": articles,
        "arxiv": articles,
    }


@pytest.fixture(scope="module")
def gpt2_format(tmp_path_factory):
    """A byte-level BPE in GPT-2's file format (vocab.json + merges.txt, `<|endoftext|>` special),
    trained here; the package opens it as GPT-2's folder is opened (its tokenizer.json), the reference
    encodes with the `tokenizers` library directly from vocab.json + merges.txt."""
    tokenizers = pytest.importorskip("tokenizers")
    folder = tmp_path_factory.mktemp("gpt2_format")
    corpus = [row for task in BENCHMARKS for row in _synthetic_rows(task, 300)]
    trainer = tokenizers.ByteLevelBPETokenizer()
    trainer.train_from_iterator(corpus, vocab_size=600, min_frequency=2, special_tokens=["<|endoftext|>"])
    trainer.save_model(str(folder))  # vocab.json + merges.txt
    vocab, merges = str(folder / "vocab.json"), str(folder / "merges.txt")
    assert json.loads(Path(vocab).read_text())["<|endoftext|>"] == 0
    gpt2 = tokenizers.ByteLevelBPETokenizer(vocab, merges)
    gpt2.add_special_tokens(["<|endoftext|>"])
    gpt2.save(str(folder / "tokenizer.json"))
    codec = load_tokenizer(str(folder))
    reference = tokenizers.ByteLevelBPETokenizer(vocab, merges)
    eos = reference.token_to_id("<|endoftext|>")
    assert codec.eos_id == eos and codec.bos_id == eos  # GPT-2: <|endoftext|> is EOS and BOS

    def encode(text: str) -> list[int]:
        return reference.encode(text).ids

    return codec, encode, eos


def test_synthetic_rows_fire_every_rule():
    fired: dict[tuple[str, int], int] = {}
    for task in BENCHMARKS:
        for row in _synthetic_rows(task, ROWS):
            ref.detokenize(task, row, fired)
    missing = [
        (table, i, rule)
        for table, rules in ref.TABLES.items()
        for i, rule in enumerate(rules)
        if rule[0] != "call"
        and (table, i) not in fired
        # the ten " N " passes of ptb_detokenizer: the first ones fire, the rest need a longer run of N
        and not (table == "ptb" and rule == ("str", " N ", " 1 ") and i > 6)
    ]
    assert not missing


@pytest.mark.parametrize("task", list(BENCHMARKS))
def test_detokenizers_follow_the_transcription_row_by_row(task):
    bench = BENCHMARKS[task]
    for row in _synthetic_rows(task, ROWS):
        assert bench.detokenize(row) == ref.detokenize(task, row), row


def test_detokenizers_on_real_text_follow_the_transcription():
    for task, rows in _shared_rows().items():
        bench = BENCHMARKS[task]
        for row in rows:
            assert bench.detokenize(row) == ref.detokenize(task, row), (task, row)


def _compare(codec, encode, eos, rows, task, protocol, num_proc):
    blocks = wrap_blocks(iter(rows), BENCHMARKS[task], codec, BLOCK_LEN, protocol, num_proc)
    expected, dropped = ref.reference_blocks(
        rows, task, encode, bos=eos, eos=eos, block_len=BLOCK_LEN, protocol=protocol, num_proc=num_proc
    )
    assert blocks.tokens.shape == (len(expected), BLOCK_LEN)
    np.testing.assert_array_equal(blocks.tokens, np.asarray(expected, dtype=np.int64))
    assert blocks.dropped == dropped and blocks.rows == len(rows) and blocks.num_proc == num_proc
    assert blocks.groups == len(ref.map_batches(len(rows), num_proc))


@pytest.mark.parametrize("num_proc", [1, 2, 3])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_blocks_equal_the_reference_on_synthetic_rows(gpt2_format, protocol, num_proc):
    codec, encode, eos = gpt2_format
    for task in ("wikitext103", "ptb", "lm1b", "pubmed"):
        _compare(codec, encode, eos, _synthetic_rows(task, ROWS, seed=1), task, protocol, num_proc)


@pytest.mark.parametrize("num_proc", [1, 2, 3])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_blocks_equal_the_reference_on_real_text(gpt2_format, protocol, num_proc):
    codec, encode, eos = gpt2_format
    for task, rows in _shared_rows().items():
        if task in ("wikitext2", "lm1b", "ag_news", "arxiv"):
            _compare(codec, encode, eos, rows, task, protocol, num_proc)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_one_stream_is_one_batch_of_every_row(gpt2_format, protocol):
    """num_proc None (the clean form): what `map` would make with one process and batch_size=None."""
    codec, encode, eos = gpt2_format
    rows = _synthetic_rows("lm1b", ROWS, seed=2)
    blocks = wrap_blocks(rows, BENCHMARKS["lm1b"], codec, BLOCK_LEN, protocol)
    expected, dropped = ref.reference_blocks(
        rows, "lm1b", encode, bos=eos, eos=eos, block_len=BLOCK_LEN, protocol=protocol, num_proc=1, batch_size=None
    )
    np.testing.assert_array_equal(blocks.tokens, np.asarray(expected, dtype=np.int64))
    assert blocks.dropped == dropped < BLOCK_LEN and blocks.groups == 1


@pytest.mark.parametrize("rows, num_proc", [(3500, 1), (3500, 2), (3500, 3), (2001, 3), (2, 3), (1, 2), (7, 4)])
def test_groups_follow_the_reference_sharding(rows, num_proc):
    expected = [(r.start, r.stop) for r in ref.map_batches(rows, num_proc)]
    assert join_groups(rows, num_proc) == expected
    assert shard_bounds(rows, num_proc) == [(r.start, r.stop) for r in ref.contiguous_shards(rows, num_proc)]


@pytest.mark.parametrize("num_proc", [1, 2, 3])
def test_groups_are_what_datasets_map_hands_its_function(num_proc):
    """The real `datasets.map(batched=True, num_proc=N)`: each call reports the row range it saw."""
    datasets = pytest.importorskip("datasets")
    rows = 2345
    table = datasets.Dataset.from_dict({"i": list(range(rows))})

    def span(batch):
        return {"lo": [batch["i"][0]], "hi": [batch["i"][-1] + 1]}

    seen = table.map(span, batched=True, num_proc=num_proc, remove_columns=["i"])
    assert list(zip(seen["lo"], seen["hi"], strict=True)) == join_groups(rows, num_proc)


def test_new_benchmark_files_give_the_builders_rows(tmp_path):
    """AG News' original CSV and the scientific papers' original val.txt (JSON lines of paragraph
    lists), read as the `datasets` builders read them; the hub's Parquet holds the columns as they are."""
    csv_file = tmp_path / "test.csv"
    csv_file.write_text('"3","Fears for T N pension","Unions said, \\""ok\\"" here"\n"4", "A title","Body"\n')
    assert list(read_rows(str(csv_file), BENCHMARKS["ag_news"])) == [
        'Fears for T N pension Unions said, \\"ok\\" here',
        "A title Body",
    ]
    val = tmp_path / "val.txt"
    record = {"article_id": "a1", "article_text": ["first para .", "second para ."], "abstract_text": ["<S> x </S>"]}
    val.write_text(json.dumps(record) + "\n")
    for task in ("pubmed", "arxiv"):
        assert list(read_rows(str(val), BENCHMARKS[task])) == ["first para .\nsecond para ."]
    hub = tmp_path / "validation.jsonl"
    hub.write_text(json.dumps({"article": "an article", "abstract": "x", "section_names": "s"}) + "\n")
    assert list(read_rows(str(hub), BENCHMARKS["pubmed"])) == ["an article"]
    bad = tmp_path / "bad.csv"
    bad.write_text('"1","only a title"\n')
    with pytest.raises(ValueError, match=r"bad.csv: CSV record 1 has 2 fields, expected 3"):
        list(read_rows(str(bad), BENCHMARKS["ag_news"]))
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": ["a b", "c"], "label": [2, 3]}), str(tmp_path / "test-00000-of-00001.parquet"))
    assert list(read_rows(str(tmp_path / "test-00000-of-00001.parquet"), BENCHMARKS["ag_news"])) == ["a b", "c"]
    pq.write_table(
        pa.table({"article": ["p1\np2"], "abstract": ["a"], "section_names": ["s"]}),
        str(tmp_path / "validation-00000-of-00001.parquet"),
    )
    assert list(read_rows(str(tmp_path / "validation-00000-of-00001.parquet"), BENCHMARKS["arxiv"])) == ["p1\np2"]
