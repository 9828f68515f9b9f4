"""Preparing data: text corpora (files, Hugging Face datasets, the built-in corpora) -> tokenizer
training -> shard sets with their manifest; also synthetic token sources, shard verification and
manifest upgrades.

Used by the command layer (`armd tokenizer`, `armd shards`, `armd train`'s first use of a built-in
corpus); training and evaluation of a model read shards through `armd_scale.data.loading` and never
import this package's corpus builders.
"""
