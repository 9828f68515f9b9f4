"""Loading shard sets for training: the resumable `ShardLoader`, mixtures of shard sets, the global
sample order, per-rank read plans, background prefetch and the loader state a checkpoint holds.

Reads only the shard format (`armd_scale.data.manifest`, `armd_scale.data.shardio`); it never
imports `armd_scale.data.prepare`, so a training process does not pay for the corpus readers.
"""
