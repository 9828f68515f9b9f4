"""`armd eval zeroshot` on an mdlm checkpoint: the continuous-time bound by default (`--steps 0`),
`--samples K` draws per block, reproducible and independent of the batch size."""

from __future__ import annotations

import json

import pytest
import torch

from armd_scale.data.tokenizers.load import load_tokenizer
from armd_scale.eval import validate
from armd_scale.model import masked_diffusion as md
from armd_scale.pretrained import load_pretrained

from .test_zeroshot import _reference_blocks, _zeroshot

LM1B = "The module returns a list .\nIt 's the object of the class , said he .\n" * 5


@torch.no_grad()
def _continuous_nelbo(model, blocks, rates, uniforms, *, first: int) -> float:
    """The continuous-time estimator written out from its definition (the draws are the command's own,
    `continuous_draws`, whose stratification tests/model/test_continuous_nelbo.py checks): per block and
    draw k, the positions from `first` on whose uniform is below the rate are masked, and the draw scores
    (N + 1) / (masked count) x their summed -log p, N = L - first (0 when nothing is masked); the mean over
    the K draws, summed over the blocks."""
    total = 0.0
    n = blocks.shape[1] - first
    for b in range(blocks.shape[0]):
        for k in range(rates.shape[1]):
            masked = uniforms[b, k] < rates[b, k]
            masked[:first] = False
            if not masked.any():
                continue
            x = blocks[b]
            logp = torch.log_softmax(model(x.masked_fill(masked, model.mask_id)[None])[0].double(), dim=-1)
            nll = -logp.gather(-1, x[:, None])[:, 0]
            total += float(nll[masked].sum()) * (n + 1) / int(masked.sum()) / rates.shape[1]
    return total


def _run(capsys, run, tmp_path, name: str, *extra: str, protocol: str = "mdlm") -> tuple[dict, str]:
    data = tmp_path / "news.en.heldout-00000-of-00050"
    data.write_text(LM1B)
    out = tmp_path / f"{name}.json"
    table = _zeroshot(
        capsys, run.dir, "--task", "lm1b", "--data", str(data), "--protocol", protocol, "--json", str(out), *extra
    )
    doc = json.loads(out.read_text())
    validate(doc, "zeroshot")
    return doc, table


def test_mdlm_defaults_to_the_continuous_time_bound(text_mdlm_run, tmp_path, capsys):
    doc, table = _run(capsys, text_mdlm_run, tmp_path, "default", "--seed", "3")
    pre = load_pretrained(text_mdlm_run.dir)
    rows = [line.strip() for line in LM1B.split("\n")[:-1]]
    blocks = _reference_blocks(rows, "lm1b", load_tokenizer(pre.tokenizer_dir), 32, "mdlm")
    rates, uniforms = md.continuous_draws(3, range(len(blocks)), 1, blocks.shape[1])  # block i's draws: (seed, i)
    with torch.no_grad():
        expected = _continuous_nelbo(pre.model, blocks, rates, uniforms, first=0)
    r = doc["results"][0]
    assert doc["likelihood"] == "elbo" and doc["steps"] == 0 and doc["samples"] == 1
    assert (
        doc["method"] == "negative ELBO, continuous time, K=1 draw of the time per block (upper bound in expectation)"
    )
    assert doc["method"] in table and f"≤{r['ppl']:.2f}" in table
    assert r["tokens"] == blocks.numel()
    assert r["nll"] == pytest.approx(expected, rel=1e-6)


def test_bd3lm_keeps_bos_as_unmasked_unscored_context_in_the_continuous_bound(text_mdlm_run, tmp_path, capsys):
    """BD3-LM's `ignore_bos`: position 0 is never masked nor scored, so the bound covers L-1 positions and
    weighs each draw by (L-1+1)/k; the reference blocks have no separator after a row."""
    doc, _ = _run(capsys, text_mdlm_run, tmp_path, "bd3lm", "--seed", "3", protocol="bd3lm")
    pre = load_pretrained(text_mdlm_run.dir)
    rows = [line.strip() for line in LM1B.split("\n")[:-1]]
    blocks = _reference_blocks(rows, "lm1b", load_tokenizer(pre.tokenizer_dir), 32, "bd3lm")
    rates, uniforms = md.continuous_draws(3, range(len(blocks)), 1, blocks.shape[1])
    with torch.no_grad():
        expected = _continuous_nelbo(pre.model, blocks, rates, uniforms, first=1)
        whole = _continuous_nelbo(pre.model, blocks, rates, uniforms, first=0)
    r = doc["results"][0]
    assert doc["scored_positions"] == "1..31 of each block" and r["tokens"] == blocks[:, 1:].numel()
    assert r["nll"] == pytest.approx(expected, rel=1e-6) and r["nll"] != pytest.approx(whole, rel=1e-6)


def test_samples_are_reproducible_and_independent_of_the_batch_size(text_mdlm_run, tmp_path, capsys):
    runs = [
        _run(capsys, text_mdlm_run, tmp_path, f"b{b}", "--samples", "3", "--batch-size", str(b))[0] for b in (1, 2, 5)
    ]
    nll = [d["results"][0]["nll"] for d in runs]
    assert nll[1] == pytest.approx(nll[0], rel=1e-6) and nll[2] == pytest.approx(nll[0], rel=1e-6)
    assert runs[0]["samples"] == 3 and "K=3 draws of the time per block" in runs[0]["method"]
    again = _run(capsys, text_mdlm_run, tmp_path, "again", "--samples", "3", "--batch-size", "2")[0]
    assert again["results"][0]["nll"] == nll[1]  # the same command, the same number
    other = _run(capsys, text_mdlm_run, tmp_path, "seed", "--samples", "3", "--seed", "1")[0]
    assert other["results"][0]["nll"] != pytest.approx(nll[0], rel=1e-6)  # the seed drives the draws
    one = _run(capsys, text_mdlm_run, tmp_path, "one", "--samples", "1")[0]
    assert one["results"][0]["nll"] != pytest.approx(nll[0], rel=1e-6)


def test_t_step_bound_stays_as_an_ablation(text_mdlm_run, tmp_path, capsys):
    doc, table = _run(capsys, text_mdlm_run, tmp_path, "t4", "--steps", "4")
    assert doc["steps"] == 4 and doc["samples"] is None
    assert doc["method"].startswith("negative ELBO, T=4 discrete steps") and doc["method"] in table
