"""wandb offline runs hold the logged metrics and keep one run id across a resume."""

import socket
import struct
import subprocess
from pathlib import Path

import pytest

from .conftest import _env, command, run_train


def read_wandb_records(path: Path) -> list[bytes]:
    """Records of a .wandb file: a 7-byte header, then LevelDB-log blocks of 32 KiB whose chunks carry
    (crc32, length, type) headers; types 1=full, 2=first, 3=middle, 4=last."""
    data, block, pos, out, partial = path.read_bytes(), 32768, 7, [], b""
    assert data[:4] == b":W&B", f"{path} is not a wandb datastore file"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            out.append(partial + chunk)
    return out


def history_and_ids(path: Path) -> tuple[dict[int, float], set[str]]:
    from wandb.proto import wandb_internal_pb2 as pb

    losses, ids = {}, set()
    for raw in read_wandb_records(path):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            ids.add(record.run.run_id)
        elif kind == "history":
            items = {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            if "loss" in items:
                losses[int(items["_step"])] = float(items["loss"])
    return losses, ids


def test_offline_run_keeps_metrics_and_id_across_resume(tmp_path, data_cache):
    run_dir = tmp_path / "run"
    first = run_train(run_dir, data_cache, "log.wandb=offline", "train.stop_at_step=3")
    assert first.returncode == 75, first.output
    second = run_train(run_dir, data_cache, "log.wandb=offline")
    assert second.returncode == 0, second.output
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2, files
    (loss_a, ids_a), (loss_b, ids_b) = (history_and_ids(f) for f in files)
    assert len(ids_a) == 1 and ids_a == ids_b  # the resumed invocation continued the same run
    logged = second.losses()
    assert loss_a == {s: v for s, v in logged.items() if s <= 3}
    assert loss_b == {s: v for s, v in logged.items() if s > 3}


def test_auto_mode_is_offline_without_a_key(monkeypatch, tmp_path):
    from armd_scale.train.metrics import wandb_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:  # a local stand-in that answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert wandb_mode("auto") == "online"
    assert wandb_mode("off") == "off"


@pytest.fixture
def closed_port():
    """A port on 127.0.0.1 that refuses connections: bound (so nothing else takes it) but not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def test_auto_mode_falls_back_to_offline_when_the_service_cannot_be_reached(monkeypatch, closed_port):
    """With a key configured, auto used to mean online unconditionally: on an offline compute node
    wandb.init then waited ~90 s and raised, on every requeue."""
    from armd_scale.train.metrics import resolve_wandb_mode

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    url = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    mode, why = resolve_wandb_mode("auto", probe_timeout=2)
    assert mode == "offline" and why is not None
    assert f"wandb service {url} cannot be reached (ConnectionRefusedError" in why

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:  # a service that answers: online
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert resolve_wandb_mode("auto", probe_timeout=2) == ("online", None)
        # WANDB_MODE wins over the probe, as it does for wandb itself
        for env_mode, expected in (("offline", "offline"), ("dryrun", "offline"), ("disabled", "off")):
            monkeypatch.setenv("WANDB_MODE", env_mode)
            assert resolve_wandb_mode("auto") == (expected, None)
    assert resolve_wandb_mode("online") == ("online", None)  # an explicit choice is never second-guessed


def test_auto_mode_trains_offline_when_the_service_cannot_be_reached(tmp_path, data_cache, closed_port):
    url = f"http://127.0.0.1:{closed_port}"
    env = {**_env(), "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": url}
    env.pop("WANDB_MODE")
    run_dir = tmp_path / "run"
    argv = [a for a in command(run_dir, data_cache, "train.steps=2") if a != "log.wandb=off"] + ["log.wandb=auto"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert f"wandb service {url} cannot be reached" in output and "logging offline" in output
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, output[-3000:]
    losses, ids = history_and_ids(files[0])
    assert sorted(losses) == [1, 2] and len(ids) == 1
