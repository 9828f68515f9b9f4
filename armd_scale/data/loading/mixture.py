"""Mixtures of shard sets: how many samples each source gives to one epoch of the mixture.

A source has a weight (its share of the samples the mixture yields) and `epochs`, the most passes
over it that one mixture epoch may take. The mixture epoch is as long as the weights allow without
taking any source past its `epochs`:

    T = min over sources of (epochs_s * N_s / w_s)          (w normalised to sum to 1, N_s samples)
    M_s = round(w_s * T) samples of source s per mixture epoch

So the source that is scarcest for its weight is used exactly `epochs` times per mixture epoch and
the others partly. A source's own order continues across mixture epochs (mixture epoch e takes
samples [e*M_s, (e+1)*M_s) of the source's endless sequence of passes), so a partly used source
gives unseen samples in the next mixture epoch, never the same ones again before a full pass.
This is OLMo-core's target ratio with a repetition cap, and gpt-neox's blended datasets when every
source may repeat freely (large `epochs`).

One shard set on its own is the mixture of one source with weight 1 and epochs 1: T = N.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from armd_scale.data.errors import DataError, DataMismatchError
from armd_scale.data.manifest import Manifest


@dataclass(frozen=True)
class MixtureSource:
    """One shard set of a mixture (a URL of a split directory)."""

    url: str
    weight: float = 1.0
    epochs: float = 1.0

    def check(self, where: str) -> None:
        if not self.url:
            raise DataError(f"{where}: the source has no path")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise DataError(f"{where}: weight={self.weight} must be a number > 0")
        if not (math.isfinite(self.epochs) and self.epochs > 0):
            raise DataError(f"{where}: epochs={self.epochs} must be a number > 0")


def as_sources(spec: str | MixtureSource | Sequence[str | MixtureSource]) -> list[MixtureSource]:
    """One URL, one source or a list of either -> a checked, non-empty list of sources."""
    items = [spec] if isinstance(spec, (str, MixtureSource)) else list(spec)
    if not items:
        raise DataError("a mixture needs at least one source")
    sources = [
        MixtureSource(s.rstrip("/")) if isinstance(s, str) else dataclasses.replace(s, url=s.url.rstrip("/"))
        for s in items
    ]
    seen: set[str] = set()
    for i, s in enumerate(sources):
        s.check(f"source {i} ({s.url})")
        if s.url in seen:
            raise DataError(
                f"source {i}: {s.url} appears twice in the mixture; give it one entry with the summed weight"
            )
        seen.add(s.url)
    return sources


def quotas(num_samples: Sequence[int], weights: Sequence[float], epochs: Sequence[float]) -> list[int]:
    """Samples of each source in one mixture epoch (see the module docstring); every quota >= 1."""
    total_weight = float(sum(weights))
    shares = [w / total_weight for w in weights]
    length = min(e * n / w for n, w, e in zip(num_samples, shares, epochs, strict=True))
    out = []
    for n, w, e in zip(num_samples, shares, epochs, strict=True):
        cap = math.floor(e * n + 1e-9)  # the binding source: exactly its allowed passes
        out.append(max(1, min(cap, round(w * length))))
    return out


def mixture_fingerprint(fingerprints: Sequence[str]) -> str:
    """The identity of the data a mixture's loader state refers to: its sources' fingerprints in
    order. One source keeps its own fingerprint, so states of single shard sets stay comparable
    with those saved before mixtures existed. Weights are not part of it: changing them continues
    the run (with a warning), changing the sources does not."""
    if len(fingerprints) == 1:
        return fingerprints[0]
    return hashlib.sha256(json.dumps(list(fingerprints)).encode()).hexdigest()


def check_compatible(manifests: list[Manifest]) -> None:
    """Sources of one mixture must hold the same kind of samples: one tokenizer, seq_len and dtype."""
    first = manifests[0]
    for m in manifests[1:]:
        for what, a, b in (
            ("tokenizer sha256", first.tokenizer_sha256, m.tokenizer_sha256),
            ("seq_len", first.seq_len, m.seq_len),
            ("dtype", first.dtype, m.dtype),
        ):
            if a != b:
                raise DataMismatchError(f"mixture sources differ in {what}: {first.url} has {a}, {m.url} has {b}")
