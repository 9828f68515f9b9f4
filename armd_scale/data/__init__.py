"""Data pipeline: text -> tokenizer -> WebDataset shards (+ manifest) -> resumable loader.

Submodules are imported on use (`from armd_scale.data.loading.loader import ShardLoader`), so that
tokenization and shard-reading worker processes do not pay for importing torch.
"""
