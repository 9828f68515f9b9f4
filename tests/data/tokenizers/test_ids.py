"""IdTokenizer: a synthetic source's tokenizer is a real tokenizer whose text form is its ids."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from armd_scale.data.errors import DataError
from armd_scale.data.tokenizers.base import INFO_FILE, Tokenizer, encode_chunks_in_worker, init_encode_worker
from armd_scale.data.tokenizers.ids import IdTokenizer


def test_ids_round_trip_through_their_text_form() -> None:
    tok = IdTokenizer.of(10, "ab" * 32, "synthetic:markov?vocab=6")
    assert isinstance(tok, Tokenizer) and tok.kind == "synthetic" and not tok.has_text
    assert tok.vocab_size == 10 and tok.sha256 == "ab" * 32 and tok.eos_id is None
    assert tok.encode("5 9  4\n0") == [5, 9, 4, 0]
    assert tok.decode(np.array([5, 9, 4])) == "5 9 4"
    assert tok.byte_lengths() is None  # no text: bits per byte is undefined
    assert INFO_FILE in tok.files()


@pytest.mark.parametrize("word", ["10", "-1", "cat", "3.5"])
def test_a_word_that_is_not_an_id_is_refused_naming_it_and_the_range(word: str) -> None:
    tok = IdTokenizer.of(10, "ab" * 32, "synthetic:markov?vocab=6")
    with pytest.raises(DataError, match=rf"'{word}' is not a token id in \[0, 10\)"):
        tok.encode(f"1 {word}")


def test_it_travels_to_worker_processes_like_any_tokenizer() -> None:
    tok = IdTokenizer.of(10, "ab" * 32)
    again = pickle.loads(pickle.dumps(tok))
    assert (again.vocab_size, again.sha256) == (10, "ab" * 32)
    init_encode_worker(again)
    assert [a.tolist() for a in encode_chunks_in_worker(["1 2", "3"])] == [[1, 2], [3]]


def test_a_record_without_its_identity_is_refused() -> None:
    with pytest.raises(DataError, match="lacks key 'sha256'"):
        IdTokenizer(b'{"vocab_size": 4}', source="tok/tokenizer.json")
