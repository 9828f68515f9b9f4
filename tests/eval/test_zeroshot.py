"""`armd eval zeroshot`: the SEDD/RADD, MDLM and BD3-LM zero-shot protocols.

The detokenizers are checked on fixed examples whose expected output was worked out by hand from the
published rules; the rows of each file kind against the `datasets` builders' rules; and the whole
pipeline (rows -> detokenizer -> tokenizer (+ separator) -> joining -> blocks -> NLL) against the
blocks of the reference transcription (zeroshot_reference.py, which shares no code with the package)
scored by calling the model directly. test_zeroshot_reference.py compares the blocks themselves.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from armd_scale.cli import main
from armd_scale.data.tokenizers.load import load_tokenizer
from armd_scale.eval import validate
from armd_scale.eval.zeroshot import markdown_table
from armd_scale.eval.zeroshot_blocks import scored_from
from armd_scale.eval.zeroshot_data import (
    BENCHMARKS,
    lambada_detokenize,
    lm1b_detokenize,
    ptb_detokenize,
    read_rows,
    wikitext_detokenize,
)
from armd_scale.model.masked_diffusion import discrete_nelbo, sequence_generator
from armd_scale.pretrained import load_pretrained
from armd_scale.rng import seeded

from . import zeroshot_reference as ref

SHARED = Path(__file__).resolve().parents[3] / "shared" / "corpora"

# WikiText-style raw text: blank lines, a heading, @-@ separators, a trailing line break.
WIKI = (
    " \n"
    " = Valkyria Chronicles = \n"
    " \n"
    ' The game \'s 2 @,@ 000 @-@ year history , said the " chronicle " , began in 1935 . \n'
    " = = Gameplay = = \n"
    " \n"
    " Players ' units move on a map ( the overworld ) at 40 ° C and the N units fight . \n"
    " The module provides functions for the list of objects and the class of the function . \n"
)


@pytest.mark.parametrize(
    "detok, raw, expected",
    [
        (
            wikitext_detokenize,
            ' The 2 @,@ 000 @-@ year @-@ old ( approx . ) lobster \'s claws , said " big " . \n',
            ' The 2,000-year-old (approx.) lobster\'s claws, said "big".\n',
        ),
        (wikitext_detokenize, " = = Description = = \n", " == Description ==\n"),
        (wikitext_detokenize, " = = = Sub = = = \n", " === Sub ===\n"),
        (
            wikitext_detokenize,
            " the players ' union at 40 ° C and N men ; ok \n",
            " the players' union at 40°C and 1 men; ok\n",
        ),
        (
            ptb_detokenize,
            "the company 's shares rose N N to $ N \\/ share n't <unk>",
            "the company's shares rose 1 1 to $1 / sharen't ?",
        ),
        (ptb_detokenize, "the boys ' toys cost # N each", "the boys' toys cost #1 each"),
        (
            lm1b_detokenize,
            'He said : " it \'s http : / / www.x.com , ok ? " ( yes ) $ 5 .',
            'He said: "it\'s http://www.x.com, ok?" (yes) $5.',
        ),
        (lm1b_detokenize, "Really ! [ no ] £ 3 ; a / b ?", "Really! [no] £3; a/b?"),
        (lambada_detokenize, "  \u201cHello,\u201d she said.  ", '\n"Hello," she said.'),
    ],
)
def test_detokenizers_on_fixed_examples(detok, raw, expected):
    assert detok(raw) == expected


def test_rows_follow_the_datasets_builders(tmp_path):
    wiki = tmp_path / "wiki.test.raw"
    wiki.write_text(" \n = T = \n \n a b \n")
    assert list(read_rows(str(wiki), BENCHMARKS["wikitext2"])) == ["", " = T = \n", "", " a b \n"]
    ptb = tmp_path / "ptb.test.txt"
    ptb.write_text(" no it was n't \n\n the end")  # the last line has no line break
    assert list(read_rows(str(ptb), BENCHMARKS["ptb"])) == ["no it was n't", "", "the end"]
    lines = tmp_path / "news.en.heldout-00000-of-00050"  # no suffix: text
    lines.write_text("First .\nSecond !\n")
    assert list(read_rows(str(lines), BENCHMARKS["lm1b"])) == ["First .", "Second !"]
    lam = tmp_path / "lambada_test.jsonl"
    lam.write_text(json.dumps({"text": " a passage \n"}) + "\n\n" + json.dumps({"text": "b"}) + "\n")
    assert list(read_rows(str(lam), BENCHMARKS["lambada"])) == [" a passage \n", "b"]  # verbatim, detok strips
    ptb_json = tmp_path / "ptb.jsonl"
    ptb_json.write_text(json.dumps({"sentence": " x "}) + "\n")
    assert list(read_rows(str(ptb_json), BENCHMARKS["ptb"])) == [" x "]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": ["", " = T = \n"]}), str(tmp_path / "test-00000-of-00001.parquet"))
    assert list(read_rows(str(tmp_path / "test-00000-of-00001.parquet"), BENCHMARKS["wikitext103"])) == [
        "",
        " = T = \n",
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: no field 'text'"):
        list(read_rows(str(bad), BENCHMARKS["lambada"]))


def _reference_blocks(text_rows, task, tokenizer, block_len, protocol, num_proc=None):
    """The reference transcription's blocks (detokenizer, row tail and grouping all from
    zeroshot_reference.py), the tokenizer called directly. num_proc None: one stream, as `map` makes
    it with one process and batch_size=None."""
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    blocks, _ = ref.reference_blocks(
        text_rows,
        task,
        lambda text: list(tokenizer.encode(text)),
        bos=bos,
        eos=tokenizer.eos_id,
        block_len=block_len,
        protocol=protocol,
        num_proc=num_proc or 1,
        batch_size=1000 if num_proc else None,
    )
    return torch.tensor(blocks)


@torch.no_grad()
def _l2r_nll(model, blocks, first):
    n = blocks.shape[1]
    pos = torch.arange(n).expand_as(blocks)
    logp = torch.log_softmax(model(blocks, pos, pos).float(), dim=-1)
    return float(-logp.gather(-1, blocks.unsqueeze(-1)).squeeze(-1)[:, first:].double().sum())


def _zeroshot(capsys, run_dir, *args):
    code = main(["eval", "zeroshot", "--checkpoint", str(run_dir), "--no-progress", "--allow-unverified", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.parametrize(
    "protocol, first, num_proc", [("sedd", 0, None), ("mdlm", 1, None), ("bd3lm", 1, None), ("mdlm", 1, 2)]
)
def test_wrapped_block_nll_equals_the_reference(text_bpe_run, tmp_path, capsys, protocol, first, num_proc):
    """Byte-level BPE (GPT-2's kind of tokenizer): the armd run's exact l2r NLL of the wrapped blocks."""
    wiki = tmp_path / "wiki.test.raw"
    wiki.write_text(WIKI * 3)
    extra = [] if num_proc is None else ["--num-proc", str(num_proc)]
    out_json = tmp_path / "zs.json"
    md = _zeroshot(
        capsys,
        text_bpe_run.dir,
        "--task",
        "wikitext103",
        "--data",
        str(wiki),
        "--protocol",
        protocol,
        "--batch-size",
        "3",
        "--json",
        str(out_json),
        *extra,
    )
    doc = json.loads(out_json.read_text())
    validate(doc, "zeroshot")
    pre = load_pretrained(text_bpe_run.dir)
    tok = load_tokenizer(pre.tokenizer_dir)
    rows = [line + "\n" if line.strip() else "" for line in (WIKI * 3).split("\n")[:-1]]
    blocks = _reference_blocks(rows, "wikitext103", tok, 32, protocol, num_proc)
    expected = _l2r_nll(pre.model, blocks, first)
    r = doc["results"][0]
    assert doc["likelihood"] == "exact" and doc["protocol"] == protocol and doc["block_len"] == 32
    assert doc["num_proc"] == num_proc and doc["scored_positions"] == f"{first}..31 of each block"
    assert (r["blocks"], r["tokens"], r["rows"]) == (blocks.shape[0], blocks[:, first:].numel(), len(rows))
    # synthetic rows are no published set: scored only because --allow-unverified was given, and labelled so
    assert r["verified"] is False and r["split"].startswith(f"unverified: {len(rows):,} rows")
    separators = 0 if protocol == "bd3lm" else len(rows)  # bd3lm appends no separator to a row
    assert r["fingerprint"]["rows"] == len(rows) and r["fingerprint"]["tokens"] == r["stream_tokens"] - separators
    assert r["nll"] == pytest.approx(expected, rel=1e-6)
    assert r["ppl"] == pytest.approx(math.exp(expected / blocks[:, first:].numel()), rel=1e-6)
    assert r["bytes"] == int(tok.byte_lengths()[blocks[:, first:].numpy()].sum())
    assert r["bits_per_byte"] == pytest.approx(expected / math.log(2) / r["bytes"], rel=1e-6)
    if protocol != "sedd":
        assert doc["bos_id"] == tok.eos_id == int(blocks[0, 0]) == int(blocks[0, -1])  # GPT-2 style: BOS = EOS
    if protocol == "bd3lm":  # no separator between rows: EOS only at the block ends
        assert not (blocks[:, 1:-1] == tok.eos_id).any()
    assert "| armd (step 20) | – | – | – | " in md and f"{r['ppl']:.2f} | – |" in md  # WikiText103 column


def test_words_and_dropped_tokens(text_bpe_run, tmp_path, capsys):
    """A block that takes the whole stream: nothing dropped, every word of the detokenized text counted."""
    tok = load_tokenizer(load_pretrained(text_bpe_run.dir).tokenizer_dir)
    rows = ["The cat sat\n", "", "on a mat\n"]
    stream = sum((tok.encode(wikitext_detokenize(r)) + [tok.eos_id] for r in rows), [])
    assert len(stream) <= 32
    wiki = tmp_path / "w.raw"
    wiki.write_text("The cat sat\n\non a mat\n")
    out = tmp_path / "zs.json"
    _zeroshot(
        capsys,
        text_bpe_run.dir,
        "--task",
        "wikitext2",
        "--data",
        str(wiki),
        "--block-len",
        str(len(stream)),
        "--json",
        str(out),
    )
    r = json.loads(out.read_text())["results"][0]
    assert (r["rows"], r["blocks"], r["dropped_tokens"], r["words"]) == (3, 1, 0, 6)
    assert r["word_ppl"] == pytest.approx(math.exp(r["nll"] / 6))


def test_ar_baseline_and_sentencepiece(text_ar_run, tmp_path, capsys):
    ptb = tmp_path / "ptb.test.txt"
    ptb.write_text(" the module 's functions return N values \n the class of the object \n" * 6)
    out = tmp_path / "zs.json"
    _zeroshot(capsys, text_ar_run.dir, "--task", "ptb", "--data", str(ptb), "--json", str(out))
    pre = load_pretrained(text_ar_run.dir)
    rows = [line.strip() for line in ptb.read_text().split("\n")[:-1]]
    blocks = _reference_blocks(rows, "ptb", load_tokenizer(pre.tokenizer_dir), 32, "sedd")
    doc = json.loads(out.read_text())
    assert doc["arch"] == "ar" and doc["results"][0]["nll"] == pytest.approx(_l2r_nll(pre.model, blocks, 0), rel=1e-6)


@torch.no_grad()
def _t_step_nelbo(model, blocks, *, steps: int, seed: int, first: int) -> float:
    """The T-step negative ELBO written out from its definition, sum over t = 1..T of (1/t) x the NLL of the
    tokens masked at rate t/T, with the command's documented noise: block i's generator is
    `sequence_generator(seed, i)` and gives, step after step, one U[0, 1) float64 draw per position; a
    position is masked where its draw is below t/T (positions before `first` never), and scored with
    -log softmax of the model's logits there."""
    total = 0.0
    for i in range(len(blocks)):
        gen, x = sequence_generator(seed, i), blocks[i : i + 1]
        for t in range(1, steps + 1):
            masked = torch.rand(x.shape[1], generator=gen, dtype=torch.float64)[None] < t / steps
            masked[:, :first] = False
            logp = torch.log_softmax(model(x.masked_fill(masked, model.mask_id)).double(), dim=-1)
            nll = -logp.gather(-1, x[..., None])[..., 0]
            total += float(nll[masked].sum()) / t
    return total


@pytest.mark.parametrize("protocol", ["mdlm", "bd3lm"])
def test_mdlm_is_scored_with_its_t_step_elbo(text_mdlm_run, tmp_path, capsys, protocol):
    lm1b = tmp_path / "news.en.heldout-00000-of-00050"
    lm1b.write_text("The module returns a list .\nIt 's the object of the class , said he .\n" * 5)
    out = tmp_path / "zs.json"
    md = _zeroshot(
        capsys,
        text_mdlm_run.dir,
        "--task",
        "lm1b",
        "--data",
        str(lm1b),
        "--protocol",
        protocol,
        "--steps",
        "4",
        "--seed",
        "3",
        "--batch-size",
        "2",
        "--json",
        str(out),
    )
    pre = load_pretrained(text_mdlm_run.dir)
    rows = [line.strip() for line in lm1b.read_text().split("\n")[:-1]]
    blocks = _reference_blocks(rows, "lm1b", load_tokenizer(pre.tokenizer_dir), 32, protocol)
    first = 0 if protocol == "mdlm" else 1  # BD3-LM's ignore_bos: BOS is context, never masked, never scored
    expected = _t_step_nelbo(pre.model, blocks, steps=4, seed=3, first=first)  # one block at a time: the
    # command's batches of 2 give the same number, as its noise is per block
    doc = json.loads(out.read_text())
    validate(doc, "zeroshot")
    r = doc["results"][0]
    assert doc["likelihood"] == "elbo" and doc["steps"] == 4 and "ELBO" in doc["method"]
    assert r["tokens"] == blocks[:, first:].numel()  # MDLM counts every position of a diffusion block, BOS too
    assert r["nll"] == pytest.approx(expected, rel=1e-6)  # float32 logits: log-softmax in float32 there, float64 here
    assert f"≤{r['ppl']:.2f}" in md


def test_refusals(text_run, text_mdlm_run, tmp_path, capsys):
    data = tmp_path / "w.raw"
    data.write_text(WIKI)
    assert (
        main(
            [
                "eval",
                "zeroshot",
                "--checkpoint",
                str(text_run.dir),
                "--task",
                "ptb",
                "--task",
                "lm1b",
                "--data",
                str(data),
            ]
        )
        == 2
    )
    assert "2 --task but 1 --data" in capsys.readouterr().err
    assert _zeroshot_ptb(text_mdlm_run, data, "--steps", "3", "--samples", "2") == 1
    assert "--samples 2 sets the draws of the continuous-time bound (--steps 0)" in capsys.readouterr().err
    assert _zeroshot_ptb(text_run, data, "--steps", "3") == 1
    assert "--steps applies to a model whose likelihood is a bound" in capsys.readouterr().err
    assert _zeroshot_ptb(text_run, data, "--samples", "2") == 1
    assert "--samples applies to a model whose likelihood is a bound" in capsys.readouterr().err
    assert _zeroshot_ptb(text_run, data, "--steps", "0") == 1  # 0 is a value for bounds too, not "unset"
    assert "drop --steps" in capsys.readouterr().err
    assert _zeroshot_ptb(text_run, data, "--block-len", "64") == 1
    assert "exceeds the model's max_seq_len=32" in capsys.readouterr().err


def test_table_layout_follows_table_1():
    doc = {
        "protocol": "sedd",
        "checkpoint": "c",
        "step": 5,
        "arch": "armd",
        "likelihood": "exact",
        "method": "exact left-to-right NLL",
        "block_len": 1024,
        "dtype": "float32",
        "results": [
            {
                "task": "lm1b",
                "title": "1BW",
                "split": "test",
                "rows": 1,
                "blocks": 1,
                "tokens": 1024,
                "dropped_tokens": 0,
                "nll_per_token": 3.0,
                "ppl": 20.0855,
                "word_ppl": 50.0,
                "bits_per_byte": 1.0,
            },
            {
                "task": "lambada",
                "title": "LAMBADA",
                "split": "test",
                "rows": 1,
                "blocks": 1,
                "tokens": 1024,
                "dropped_tokens": 0,
                "nll_per_token": 2.0,
                "ppl": 7.389,
                "word_ppl": None,
                "bits_per_byte": None,
            },
        ],
    }
    lines = markdown_table(doc).splitlines()
    assert "protocol `sedd` (SEDD/RADD's Table 1 protocol)" in lines[0] and "one stream" in lines[0]
    assert lines[2] == "| Model | LAMBADA | WikiText2 | PTB | WikiText103 | 1BW |"
    assert lines[4] == "| armd (step 5) | 7.39 | – | – | – | 20.09 |"
    # a benchmark of MDLM's Table 3 adds its columns; the protocol and the joining are named
    doc = {**doc, "protocol": "bd3lm", "num_proc": 2}
    doc["results"] = [*doc["results"], {**doc["results"][0], "task": "pubmed", "title": "Pubmed", "ppl": 30.0}]
    lines = markdown_table(doc).splitlines()
    assert "protocol `bd3lm` (BD3-LM's zero-shot table)" in lines[0] and "of 2 contiguous shards" in lines[0]
    assert lines[2] == "| Model | LAMBADA | WikiText2 | PTB | WikiText103 | 1BW | AG News | Pubmed | Arxiv |"
    assert lines[4] == "| armd (step 5) | 7.39 | – | – | – | 20.09 | – | 30.00 | – |"


def test_scored_positions_per_protocol():
    """sedd scores every position; mdlm gives l2r models BOS as context and scores a diffusion bound's
    BOS too (MDLM's `_loss`); bd3lm never scores BOS (BD3-LM's `ignore_bos`, AR shift)."""
    assert [scored_from(p, exact) for p in ("sedd", "mdlm", "bd3lm") for exact in (True, False)] == [0, 0, 1, 0, 1, 1]


def test_the_bound_keeps_positions_before_first_as_context():
    """discrete_nelbo(first=1): BOS is never masked and never scored (BD3-LM's `ignore_bos`)."""
    vocab, mask_id, steps = 7, 6, 5
    seen = []

    def denoise(noisy):
        seen.append(noisy.clone())
        return torch.zeros(*noisy.shape, vocab)  # uniform: every masked token costs log(vocab)

    tokens = torch.tensor([[5, 1, 2, 3, 4, 0, 1, 2]] * 3)
    total = discrete_nelbo(denoise, tokens, steps, mask_id, seeded(0), first=1)
    assert len(seen) == steps and all(not (z[:, 0] == mask_id).any() for z in seen)
    expected = sum(float((z[:, 1:] == mask_id).sum(dim=1).double().sum()) / t for t, z in enumerate(seen, 1))
    assert float(total.sum()) == pytest.approx(expected * math.log(vocab))
    seen.clear()
    masked_everywhere = discrete_nelbo(denoise, tokens, steps, mask_id, seeded(0))
    assert any((z[:, 0] == mask_id).any() for z in seen) and float(masked_everywhere.sum()) >= float(total.sum())


def test_shared_corpora_through_the_protocol(text_bpe_run, tmp_path, capsys):
    """Real WikiText-2 and LM1B text (../shared/corpora), wrapped and scored like any file a user supplies."""
    wt2, lm1b = SHARED / "wikitext-2" / "valid.txt", SHARED / "lm1b" / "1b_benchmark.dev.tokens"
    if not (wt2.is_file() and lm1b.is_file()):
        pytest.skip(f"{SHARED} has no wikitext-2/valid.txt and lm1b/1b_benchmark.dev.tokens")
    head = tmp_path / "wt2.raw"
    head.write_text("".join(wt2.read_text().splitlines(keepends=True)[:60]))
    out = tmp_path / "zs.json"
    _zeroshot(capsys, text_bpe_run.dir, "--task", "wikitext2", "--data", str(head), "--json", str(out))
    pre = load_pretrained(text_bpe_run.dir)
    tok = load_tokenizer(pre.tokenizer_dir)
    rows = [line + "\n" if line.strip() else "" for line in head.read_text().split("\n")[:-1]]
    blocks = _reference_blocks(rows, "wikitext2", tok, 32, "sedd")
    r = json.loads(out.read_text())["results"][0]
    assert r["nll"] == pytest.approx(_l2r_nll(pre.model, blocks, 0), rel=1e-6)
    # the detokenized text is ordinary text: no " @-@ " or " , " left, so GPT-2-style BPE sees what it was made for
    decoded = tok.decode(blocks.flatten().tolist())
    assert " @-@ " not in decoded and " , " not in decoded


def _zeroshot_ptb(run, data, *extra: str) -> int:
    """`armd eval zeroshot` of `run` on the ptb task with `data` and the extra arguments."""
    return main(["eval", "zeroshot", "--checkpoint", str(run.dir), "--task", "ptb", "--data", str(data), *extra])
