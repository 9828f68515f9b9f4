"""Tokenizers: the `Tokenizer` interface, its backends (SentencePiece, Hugging Face, the id-only
tokenizer of synthetic sources), finding one from a `--tokenizer` value, and `TokenizerRef`, the
typed identity (location, kind, checksum) that runs, shards and checkpoints carry.

Below `prepare/` and `loading/`: nothing here reads corpora or shards. Training a tokenizer reads a
corpus, so it is `armd_scale.data.prepare.tokenizer_training`.
"""
