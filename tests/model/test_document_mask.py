"""Document masking in packed windows (`forward(..., doc=)`, data.document_mask; docs/ARCHITECTURE.md,
Document masking): each document of a window is its own any-order problem.

References are independent of the code under test: hand-written document ids and positions, the model
on one document alone with document masking off (the path every other contract test checks), an
enumeration of every filling of a document, and the cached decoder run on one document at a time.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from armd_scale.generate import make_decoder
from armd_scale.model.attention import attend, prepare
from armd_scale.model.masks import (
    causal_spec,
    document_ids,
    document_positions,
    strict_spec,
    two_stream_spec,
)

from .conftest import ORDER_CASES, ORDER_IDS, WEIGHTS, draw_order, tiny_model

N, EOS = 16, 10  # tiny_model's vocabulary is 11 ids: 0..9 are text, 10 plays EOS
CPU = torch.device("cpu")
# every G0 term on, so each one is checked for leakage across a boundary
ALL_TERMS = dict(neighbour_heads=3, previous_block_input=True, positional_start_scope="first_block")


def packed_tokens(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Windows of three documents: EOS ends the first at 5 and the second at 10; the third is cut by the window."""
    tokens = torch.randint(0, EOS, (batch, N), generator=torch.Generator().manual_seed(seed))
    tokens[:, 5] = EOS
    tokens[:, 10] = EOS
    return tokens


def test_document_ids_and_positions_from_eos():
    tokens = torch.tensor([[4, 10, 3, 3, 10, 10, 7], [1, 2, 3, 4, 5, 6, 7]])
    doc = document_ids(tokens, eos_id=10)
    # the EOS belongs to the document it ends; an empty document (EOS right after EOS) is one token
    assert doc.tolist() == [[0, 0, 1, 1, 1, 2, 3], [0, 0, 0, 0, 0, 0, 0]]
    assert document_positions(doc).tolist() == [[0, 1, 0, 1, 2, 0, 0], [0, 1, 2, 3, 4, 5, 6]]


def _other_docs(doc: torch.Tensor, order: torch.Tensor, changed: int) -> torch.Tensor:
    """[B, N] generation indices whose target lies outside document `changed`."""
    return torch.gather(doc, 1, order) != changed


@pytest.mark.parametrize("randomise", WEIGHTS)
@pytest.mark.parametrize("case", ORDER_CASES, ids=ORDER_IDS)
def test_no_cross_document_leakage(case, randomise):
    """Changing any non-EOS token of one document leaves every logit of the other documents bit-identical
    with document masking, in both directions (earlier and later documents), and changes them without."""
    kind, params, step = case
    model = tiny_model(randomise=randomise, **ALL_TERMS)
    tokens = packed_tokens()
    doc = document_ids(tokens, EOS)
    order, block = draw_order(kind, params, step, batch=2, n=N, seed=3)
    with torch.no_grad():
        base, base_off = model(tokens, order, block, doc), model(tokens, order, block)
        leaked_without = False
        for pos in [0, 3, 6, 9, 12, 15]:  # a token of each document, first and last documents included
            changed = tokens.clone()
            changed[:, pos] = (tokens[:, pos] + 1) % EOS
            others = _other_docs(doc, order, int(doc[0, pos]))
            out = model(changed, order, block, doc)
            assert torch.equal(out[others], base[others]), f"a change at {pos} leaked into another document"
            leaked_without |= (model(changed, order, block)[others] - base_off[others]).abs().max().item() > 1e-4
        assert leaked_without, "without document masking the documents must see each other"


def _alone(tokens, order, block, doc, b: int, d: int):
    """Document d of row b as a window of its own: its tokens, its generation entries in the same relative
    order (positions from 0), their blocks relabelled 0, 1, ... by rank."""
    positions = (doc[b] == d).nonzero()[:, 0]
    first = int(positions[0])
    entries = (doc[b, order[b]] == d).nonzero()[:, 0]  # generation indices of document d, in order
    sub_order = (order[b, entries] - first)[None]
    sub_block = torch.unique(block[b, entries], return_inverse=True)[1][None]
    return tokens[b, positions][None], sub_order, sub_block, entries


@pytest.mark.parametrize("randomise", WEIGHTS)
@pytest.mark.parametrize("case", ORDER_CASES, ids=ORDER_IDS)
def test_each_document_is_its_own_window(case, randomise):
    """A document's logits in the packed window equal the model's logits for that document alone (document
    masking off), so the orders' and blocks' contract holds per document."""
    kind, params, step = case
    model = tiny_model(randomise=randomise, **ALL_TERMS)
    tokens = packed_tokens()
    doc = document_ids(tokens, EOS)
    order, block = draw_order(kind, params, step, batch=2, n=N, seed=4)
    with torch.no_grad():
        packed = model(tokens, order, block, doc)
        for b in range(2):
            for d in range(3):
                sub_tokens, sub_order, sub_block, entries = _alone(tokens, order, block, doc, b, d)
                ref = model(sub_tokens, sub_order, sub_block)
                torch.testing.assert_close(packed[b, entries], ref[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["l2r", "random", "sbp"])
def test_probabilities_of_one_document_sum_to_one(kind):
    """Vocabulary 3 ids + EOS (id 3), window [doc A: 4 positions | doc B: 4 fixed tokens]: summing the
    joint probability of doc A over all 4^4 fillings gives 1 under the order, and likewise doc B's
    fillings with A fixed. The ids are given explicitly, so fillings that contain EOS keep the boundary."""
    model = tiny_model(vocab_size=4, randomise=True, **ALL_TERMS).double()
    n, sizes = 8, (4, 4)
    doc = torch.tensor([0] * sizes[0] + [1] * sizes[1])
    params = dict(streams=2) if kind == "sbp" else {}
    order, block = draw_order(kind, params, None, batch=1, n=n, seed=5)
    fixed = torch.tensor([2, 0, 1, 3, 1, 1, 2, 0])
    for d, size in enumerate(sizes):
        where = (doc == d).nonzero()[:, 0]
        fillings = torch.tensor(list(itertools.product(range(4), repeat=size)))
        tokens = fixed.repeat(len(fillings), 1)
        tokens[:, where] = fillings
        rows = len(fillings)
        with torch.no_grad():
            logp = model(tokens, order.expand(rows, -1), block.expand(rows, -1), doc.expand(rows, -1))
        logp = logp.log_softmax(-1)
        target = torch.gather(tokens, 1, order.expand(rows, -1))
        per_entry = torch.gather(logp, 2, target[..., None])[..., 0]
        in_doc = doc[order[0]] == d
        total = per_entry[:, in_doc].sum(dim=1).exp().sum()
        assert abs(total.item() - 1.0) < 1e-9, f"document {d}: sum of p = {total.item()}"


@pytest.mark.parametrize("kind,params", [("l2r", {}), ("random", {}), ("sbp", dict(streams=2))])
def test_cached_decoding_per_document_equals_the_packed_forward(kind, params):
    """Decoding a packed window with the cache is decoding each document with its own cache (positions
    from 0), block by block with the true tokens; its logits equal the full forward's with boundaries."""
    model = tiny_model(randomise=True, **ALL_TERMS)
    tokens = packed_tokens(batch=1, seed=7)
    doc = document_ids(tokens, EOS)
    order, block = draw_order(kind, params, None, batch=1, n=N, seed=8)
    with torch.no_grad():
        full = model(tokens, order, block, doc)
    for d in range(3):
        sub_tokens, sub_order, sub_block, entries = _alone(tokens, order, block, doc, 0, d)
        decoder = make_decoder(model, 1, sub_tokens.shape[1])
        prev = None
        for blk in range(int(sub_block.max()) + 1):
            idx = (sub_block[0] == blk).nonzero()[:, 0]
            commit_pos = None if prev is None else sub_order[:, prev]
            commit_tok = None if prev is None else sub_tokens.gather(1, commit_pos)
            logits = decoder.step(commit_tok, commit_pos, sub_order[:, idx])
            assert (logits[0] - full[0, entries[idx]]).abs().max().item() <= 1e-4
            prev = idx


@pytest.mark.parametrize("make_spec", [causal_spec, strict_spec, two_stream_spec])
@pytest.mark.parametrize("kind,params", [("l2r", {}), ("random", {}), ("sbp", dict(streams=4))])
def test_flex_document_mask_matches_dense(kind, params, make_spec):
    pytest.importorskip("torch.nn.attention.flex_attention", reason="this torch has no FlexAttention")
    _, block = draw_order(kind, params, None, batch=2, n=N, seed=1)
    doc_g = torch.gather(document_ids(packed_tokens(), EOS), 1, draw_order(kind, params, None, 2, N, seed=1)[0])
    spec = make_spec(block, doc_g)
    gen = torch.Generator().manual_seed(2)
    q = torch.randn(2, 2, spec.shape[1], 8, generator=gen)
    k, v = torch.randn(2, 2, spec.shape[2], 8, generator=gen), torch.randn(2, 2, spec.shape[2], 8, generator=gen)
    dense = attend(q, k, v, prepare(spec, "sdpa", CPU, q.dtype))
    with torch.no_grad():
        flex = attend(q, k, v, prepare(spec, "flex", CPU, q.dtype))
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
    # and the mask is not the one without documents
    assert not torch.equal(spec.dense(), make_spec(block).dense())


def test_whole_model_flex_matches_sdpa_with_documents():
    pytest.importorskip("torch.nn.attention.flex_attention", reason="this torch has no FlexAttention")
    tokens = packed_tokens()
    doc = document_ids(tokens, EOS)
    order, block = draw_order("sbp", dict(streams=2), None, batch=2, n=N, seed=3)
    with torch.no_grad():
        ref = tiny_model(attention_backend="sdpa", **ALL_TERMS)(tokens, order, block, doc)
        out = tiny_model(attention_backend="flex", **ALL_TERMS)(tokens, order, block, doc)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_one_document_is_bit_identical_to_no_documents():
    """doc all zeros (a window that is one document) computes what the unmasked forward computes."""
    model = tiny_model(randomise=True, **ALL_TERMS)
    tokens = torch.randint(0, EOS, (2, N), generator=torch.Generator().manual_seed(1))
    order, block = draw_order("sbp", dict(streams=2), None, batch=2, n=N, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(
            model(tokens, order, block, torch.zeros_like(tokens)), model(tokens, order, block), atol=1e-6, rtol=0
        )


def test_doc_of_another_shape_is_refused():
    model = tiny_model()
    order, block = draw_order("l2r", {}, None, batch=1, n=8)
    with pytest.raises(ValueError, match="doc"):
        model(torch.zeros(1, 8, dtype=torch.long), order, block, torch.zeros(1, 7, dtype=torch.long))


def test_chunked_recomputed_g0_with_documents_keeps_values_and_gradients():
    """In training G0 is computed a chunk of query rows at a time under activation checkpointing
    (model/query_input.py); the document ids travel with the chunks, so values and gradients equal one
    dense chunk's."""
    tokens = packed_tokens()
    doc = document_ids(tokens, EOS)
    order, block = draw_order("random", {}, None, batch=2, n=N, seed=6)
    grads = []
    for rows in (N, 5):
        model = tiny_model(randomise=True, **ALL_TERMS).double().train()
        model.query_chunk_rows = rows
        loss = model(tokens, order, block, doc).logsumexp(-1).sum()
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b)


def test_compiled_masks_are_cached_per_document_pattern():
    """The flex BlockMask cache is keyed by content: two windows with other boundaries must not share one."""
    _, block = draw_order("l2r", {}, None, batch=1, n=8)
    a, b = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]]), torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    assert causal_spec(block, a).cache_key() != causal_spec(block, b).cache_key()
    assert causal_spec(block, a).cache_key() == causal_spec(block.clone(), a.clone()).cache_key()
    assert causal_spec(block, a).cache_key() != causal_spec(block).cache_key()
