"""ensure_builtin_dataset: built once per settings, race-safe, real URLs passed through."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from armd_scale.config import DataConfig
from armd_scale.data.errors import DataError
from armd_scale.data.loading.loader import ShardLoader
from armd_scale.data.manifest import manifest_info
from armd_scale.data.prepare.builtin import builtin_cache_dir, ensure_builtin_dataset
from armd_scale.data.tokenizers.load import load_tokenizer, tokenizer_info


def cfg(tmp_path: Path, **kw) -> DataConfig:
    kw.setdefault("train", "builtin:pydoc")
    return DataConfig(
        cache_dir=str(tmp_path / "cache"), seq_len=kw.pop("seq_len", 64), vocab_size=kw.pop("vocab_size", 200), **kw
    )


def test_pydoc_is_built_once_and_matches_its_settings(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    train, val, tok_dir = ensure_builtin_dataset(c)
    info = manifest_info(train)
    tok = load_tokenizer(tok_dir)
    assert info["seq_len"] == 64 and info["vocab_size"] == tok.vocab_size == 200
    assert info["tokenizer_sha256"] == tok.sha256 == manifest_info(val)["tokenizer_sha256"]
    assert 0 < manifest_info(val)["samples"] < info["samples"] / 10
    stamp = (Path(train) / "manifest.json").stat().st_mtime_ns
    assert ensure_builtin_dataset(c) == (train, val, tok_dir)
    assert (Path(train) / "manifest.json").stat().st_mtime_ns == stamp, "rebuilt although cached"
    other = ensure_builtin_dataset(cfg(tmp_path, seq_len=32))
    assert other[0] != train and manifest_info(other[0])["seq_len"] == 32
    assert ensure_builtin_dataset(cfg(tmp_path, val="/explicit/val"))[1] == "/explicit/val"
    loader = ShardLoader(
        train,
        global_batch_size=8,
        micro_batch_size=4,
        rank=0,
        world_size=1,
        seed=0,
        expect_tokenizer_sha=tok.sha256,
        expect_seq_len=64,
    )
    assert tuple(next(iter(loader)).shape) == (4, 64)
    loader.close()


def test_concurrent_builders_and_waiters_agree(tmp_path: Path) -> None:
    c = cfg(tmp_path, vocab_size=180)
    results: list[tuple] = []
    errors: list[BaseException] = []

    def run(build: bool) -> None:
        try:
            results.append(ensure_builtin_dataset(c, build=build, wait_timeout_s=120))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(b,)) for b in (False, True, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3 and len(set(results)) == 1
    root = builtin_cache_dir(c)
    assert sorted(p.name for p in root.parent.iterdir()) == [root.name], "temporary build left behind"


def test_waiting_for_a_builder_that_never_comes_times_out(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="waited 0s"):
        ensure_builtin_dataset(cfg(tmp_path), build=False, wait_timeout_s=0.0)


def test_synthetic_source_builds_shards_with_its_identity(tmp_path: Path) -> None:
    c = cfg(tmp_path, train="synthetic:markov?vocab=8&order=2&samples=256&val_samples=32", seq_len=16)
    train, val, tok_dir = ensure_builtin_dataset(c)
    info = tokenizer_info(tok_dir)
    assert manifest_info(train)["tokenizer_sha256"] == info["sha256"] and info["vocab_size"] == 12
    assert manifest_info(train)["samples"] == 256 and manifest_info(val)["samples"] == 32
    assert info["entropy_rate_nats"] > 0


def test_real_urls_pass_through(tmp_path: Path) -> None:
    c = cfg(tmp_path, train="s3://bucket/train", val="s3://bucket/val", tokenizer="/tok")
    assert ensure_builtin_dataset(c) == ("s3://bucket/train", "s3://bucket/val", "/tok")
    assert not (tmp_path / "cache").exists()
