"""Data pipeline: text -> tokenizer -> WebDataset shards (+ manifest) -> resumable loader.

Three subsystems over a small shared base, bottom to top (tests/test_layers.py checks the order):

- base: `errors`, `urls` (fsspec storage, retries), the shard format (`manifest`, `shardio`),
  `permutations`, `chunk_cache`;
- `tokenizers/`: the `Tokenizer` interface and its backends, and `TokenizerRef`, the typed identity
  a run and its checkpoints carry;
- `prepare/`: text corpora -> tokenizer training -> shard sets (the `armd tokenizer` / `armd shards`
  commands and the first use of a built-in corpus);
- `loading/`: shard sets -> batches for training (`ShardLoader`); it never imports `prepare/`.

Submodules are imported on use (`from armd_scale.data.loading.loader import ShardLoader`), so that
tokenization and shard-reading worker processes do not pay for importing torch.
"""
