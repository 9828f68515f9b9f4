"""Read amplification: bytes each data-parallel rank reads per byte it trains on.

Writes a 16-shard set (16 x 1,000 samples x 1,024 tokens, uint16, 41 MB; random ids), then runs
one epoch of every rank (or a sample of ranks) for W = 1, 8 and 64, one simulated world at a time
in a child process, and prints a Markdown table. Two storages:

- local disk: the child's own I/O counter `rchar` from /proc/self/io (bytes returned by read
  calls). `read_bytes` would count only what came from the device, which is 0 for files in the
  page cache and cannot be forced here (dropping caches needs root on the host), so `rchar` is the
  honest count of what the loader asked for.
- S3: a moto server in this process, wrapped in a WSGI middleware that counts requests and
  response bytes as the server sends them (the server's side of the wire).

Bytes trained on = 2 bytes per token the rank yields. Shard records also hold a 512-byte tar
header per sample (1.25x the token bytes at seq_len 1024), which any reader of these shards reads.

    python bench/data_reads.py [--s3] [--tree PATH_OF_ANOTHER_CHECKOUT] [--worlds 1,8,64]

`--tree` runs the loader of another checkout (for before/after comparisons); for a tree whose
loader reads manifest format 1, the set is also offered with a format-1 manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEQ_LEN, SHARDS, PER_SHARD = 1024, 16, 1000
BUCKET = "armd-bench"


# -- child: one simulated world -------------------------------------------------------------------
def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def _server_counts(endpoint: str | None) -> dict:
    if endpoint is None:
        return {}
    import urllib.request

    with urllib.request.urlopen(f"{endpoint}/__counts__") as r:
        return json.loads(r.read())


def child(args: argparse.Namespace) -> None:
    from armd_scale.data.loading.loader import ShardLoader

    def loader(rank: int) -> ShardLoader:
        kw = dict(global_batch_size=args.gbs, micro_batch_size=min(args.micro, args.gbs // args.world))
        return ShardLoader(args.url, rank=rank, world_size=args.world, seed=0, prefetch=0, loop=False, **kw)

    with loader(0) as warm:  # imports and connections happen here, not inside a measurement
        next(iter(warm))
    for rank in [int(r) for r in args.ranks.split(",")]:
        _server_counts(args.endpoint)  # resets the server's counters
        before, start = _rchar(), time.perf_counter()
        with loader(rank) as ld:
            tokens = sum(batch.numel() for batch in ld)
        seconds = time.perf_counter() - start
        out = {"rank": rank, "rchar": _rchar() - before, "tokens": tokens, "seconds": seconds}
        out["server"] = _server_counts(args.endpoint)
        print(json.dumps(out), flush=True)


# -- S3 server with counts ------------------------------------------------------------------------
class CountingApp:
    """WSGI middleware: counts requests and the response bytes the server sends; GET /__counts__
    returns the counts since the last such call and resets them."""

    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.counts = self._zero()

    @staticmethod
    def _zero() -> dict:
        return {"requests": 0, "bytes": 0, "shard_gets": 0, "shard_bytes": 0}

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/__counts__":
            with self.lock:
                body, self.counts = json.dumps(self.counts).encode(), self._zero()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        shard = environ.get("REQUEST_METHOD") == "GET" and path.endswith(".tar")
        with self.lock:
            self.counts["requests"] += 1
            self.counts["shard_gets"] += shard
        return self._counted(self.app(environ, start_response), shard)

    def _counted(self, body, shard: bool):
        try:
            for piece in body:
                with self.lock:
                    self.counts["bytes"] += len(piece)
                    if shard:
                        self.counts["shard_bytes"] += len(piece)
                yield piece
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()


def start_s3() -> tuple[str, dict]:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_request(self, *args, **kwargs) -> None:  # one line per request would drown the table
            pass

    app = CountingApp(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(env)
    return endpoint, env


# -- parent ---------------------------------------------------------------------------------------
def manifest_format(tree: str) -> str:
    code = "import armd_scale.data.manifest as m; print(m.MANIFEST_FORMAT)"
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": tree},
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def format_1_view(src: Path, dst: Path) -> None:
    """The same shards (symlinked) under a format-1 manifest, for a loader from before chunking."""
    dst.mkdir(parents=True)
    raw = json.loads((src / "manifest.json").read_text())
    raw["format"] = "armd_scale.shards/1"
    raw.pop("chunk_samples", None)
    for shard in raw["shards"]:
        shard.pop("chunk_sha256", None)
        (dst / shard["name"]).symlink_to(src / shard["name"])
    (dst / "manifest.json").write_text(json.dumps(raw))


def measure(url: str, world: int, ranks: list[int], args, tree: str, env: dict, endpoint: str | None) -> list[dict]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--url", url, "--world", str(world)]
    cmd += ["--ranks", ",".join(map(str, ranks)), "--gbs", str(args.gbs), "--micro", str(args.micro)]
    if endpoint:
        cmd += ["--endpoint", endpoint]
    run_env = {**os.environ, **env, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=run_env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def ranks_for(world: int, sample: int) -> list[int]:
    if world <= sample:
        return list(range(world))
    return sorted({round(i * (world - 1) / (sample - 1)) for i in range(sample)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--world", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ranks", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--gbs", type=int, default=64, help="global batch size (default 64)")
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--worlds", default="1,8,64")
    ap.add_argument("--sample-ranks", type=int, default=64, help="measure at most this many ranks per world")
    ap.add_argument("--s3", action="store_true", help="also read through a local moto S3 server")
    ap.add_argument("--chunk-kb", type=float, help="chunk size of the set (default: the writer's)")
    ap.add_argument("--tree", default=str(HERE.parent), help="checkout whose armd_scale is measured")
    args = ap.parse_args()
    if args.child:
        return child(args)

    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    from data_throughput import write_set

    tree = str(Path(args.tree).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "set"
        from armd_scale.data.shardio import chunk_samples_for

        per_chunk = chunk_samples_for(SEQ_LEN, "uint16", args.chunk_kb) if args.chunk_kb else None
        write_set(str(local), SHARDS * PER_SHARD, SEQ_LEN, PER_SHARD, 32_000, per_chunk)
        size = sum(p.stat().st_size for p in local.glob("*.tar"))
        url = str(local)
        if manifest_format(tree).endswith("/1"):
            format_1_view(local, Path(tmp) / "set-v1")
            url = str(Path(tmp) / "set-v1")
        storages = [("local disk", url, {}, None)]
        if args.s3:
            endpoint, env = start_s3()
            from armd_scale.data.urls import url_to_fs

            fs, _ = url_to_fs(f"s3://{BUCKET}")
            fs.mkdir(BUCKET)
            fs.put(str(url) + "/", f"{BUCKET}/set/", recursive=True)
            storages.append(("S3 (moto)", f"s3://{BUCKET}/set", env, endpoint))
        print(
            f"{SHARDS} shards x {PER_SHARD} samples x {SEQ_LEN} tokens (uint16): {size / 1e6:.1f} MB. "
            f"Global batch {args.gbs}; one epoch per rank; loader from {tree}.\n"
        )
        print(
            "| storage | W | ranks measured | read per rank (MB) | read / token bytes: mean | max | "
            "requests per rank | rank's tokens/s |"
        )
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, where, env, endpoint in storages:
            for world in [int(w) for w in args.worlds.split(",")]:
                rows = measure(where, world, ranks_for(world, args.sample_ranks), args, tree, env, endpoint)
                read = [r["server"]["bytes"] if endpoint else r["rchar"] for r in rows]
                ratios = [b / (2 * r["tokens"]) for b, r in zip(read, rows, strict=True)]
                requests = sum(r["server"].get("requests", 0) for r in rows) / len(rows) if endpoint else None
                rate = sum(r["tokens"] for r in rows) / sum(r["seconds"] for r in rows)
                print(
                    f"| {name} | {world} | {len(rows)} | {sum(read) / len(rows) / 1e6:.2f} | "
                    f"{sum(ratios) / len(ratios):.2f} | {max(ratios):.2f} | "
                    f"{'-' if requests is None else f'{requests:.0f}'} | {rate:,.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
