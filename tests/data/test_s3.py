"""s3:// round trip against an S3-compatible server (moto) started on 127.0.0.1 for this module."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("s3fs", reason="s3fs is needed for s3:// URLs (pip install .[s3])")
pytest.importorskip("moto.server", reason="moto[server] provides the local S3 server (pip install .[test])")

from armd_scale.data.errors import BadShardError  # noqa: E402
from armd_scale.data.loading.loader import ShardLoader  # noqa: E402
from armd_scale.data.manifest import read_manifest  # noqa: E402
from armd_scale.data.prepare.shards import build_shards  # noqa: E402
from armd_scale.data.prepare.tokenizer_training import train_tokenizer  # noqa: E402
from armd_scale.data.prepare.verify import verify_shards  # noqa: E402
from armd_scale.data.tokenizers.load import load_tokenizer  # noqa: E402
from armd_scale.data.urls import RetryPolicy, url_to_fs  # noqa: E402
from armd_scale.ports import free_port  # noqa: E402
from tests.data.conftest import shard_stream  # noqa: E402

BUCKET = "armd-test"


def _wait_until_serving(url: str, proc: subprocess.Popen, log, timeout_s: float) -> None:
    """Poll the server until it answers HTTP (any status) or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"moto server exited early with code {proc.returncode}: {log.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1.0).close()
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto server at {url} did not answer within {timeout_s}s") from None
            time.sleep(0.05)  # poll interval, not synchronisation: the loop checks readiness


@dataclass
class S3Server:
    url: str
    log: Path  # one line per request, as the server saw it

    def shard_gets(self) -> list[str]:
        """The server's log lines of GET requests for shard objects so far."""
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if '"GET ' in line and ".tar" in line]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    port = free_port()
    # the server logs every request: to a file, since an unread pipe would fill up and stall it
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    log = open(log_path, "w+b")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    try:
        _wait_until_serving(endpoint, proc, log, timeout_s=30)
        os.environ.update(env)  # inherited by loader worker processes too
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        fs, _ = url_to_fs(f"s3://{BUCKET}")
        fs.mkdir(BUCKET)
        yield S3Server(endpoint, log_path)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_s3_round_trip(s3_endpoint: S3Server, tmp_path: Path, corpus_dir: Path) -> None:
    tok_url = f"s3://{BUCKET}/tokenizer"
    tok = train_tokenizer(["builtin:pydoc"], tok_url, vocab_size=200)
    assert load_tokenizer(tok_url).sha256 == tok.sha256
    out = f"s3://{BUCKET}/sets/pydoc"
    manifests = build_shards(["builtin:pydoc"], out, tok_url, seq_len=32, val_fraction=0.1, samples_per_shard=200)
    local = build_shards(
        ["builtin:pydoc"], str(tmp_path / "local"), tok, seq_len=32, val_fraction=0.1, samples_per_shard=200
    )
    assert manifests["train"].fingerprint == local["train"].fingerprint  # same bytes wherever they live
    assert all(r.ok for r in verify_shards(out))
    assert (shard_stream(out + "/train") == shard_stream(str(tmp_path / "local" / "train"))).all()
    fs, path = url_to_fs(out)
    assert not [p for p in fs.find(path) if ".tmp-" in p], "temporary objects left behind"

    def batches(url: str, workers: int, **kw) -> list:
        loader = ShardLoader(
            url,
            global_batch_size=16,
            micro_batch_size=8,
            rank=0,
            world_size=1,
            seed=0,
            num_workers=workers,
            loop=False,
            expect_tokenizer_sha=tok.sha256,
            expect_seq_len=32,
            retry=RetryPolicy(attempts=2, first_delay_s=0.01),
            **kw,
        )
        return [b.tolist() for b in loader]

    on_s3 = batches(out + "/train", workers=1)  # a worker process reads from S3 with the same settings
    assert on_s3 == batches(str(tmp_path / "local" / "train"), workers=0) and len(on_s3) > 10

    # through a node cache: the first reader fetches each chunk once (one ranged GET), the next one nothing
    cache = str(tmp_path / "cache")
    gets = len(s3_endpoint.shard_gets())
    assert batches(out + "/train", workers=0, cache_dir=cache) == on_s3
    fetched = s3_endpoint.shard_gets()[gets:]
    chunks = sum(len(s.chunks) for s in read_manifest(out + "/train").shards)
    assert len(fetched) == chunks and all(" 206 " in line for line in fetched)  # 206: partial content
    gets = len(s3_endpoint.shard_gets())
    assert batches(out + "/train", workers=1, cache_dir=cache) == on_s3
    assert len(s3_endpoint.shard_gets()) == gets

    m = read_manifest(out + "/train")
    bad = m.shard_url(1)
    fs.pipe_file(url_to_fs(bad)[1], b"not a shard")
    assert dict(verify_shards(out + "/train")[0].bad).keys() == {bad}
    with pytest.raises(BadShardError, match=bad):
        batches(out + "/train", workers=0)
