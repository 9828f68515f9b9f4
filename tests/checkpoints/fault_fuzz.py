"""Damage one file of a run's newest checkpoint at a time and classify what the readers make of it.

Every case must end in one of the accepted outcomes:
- "fallback": the damaged checkpoint is named (the file, or the folder for COMPLETE) and the trainer sets it
  aside and picks the older intact one; the tools that check the whole folder (open_source scope "folder",
  as inspect) skip it the same way, without moving it;
- "refused": a named tamper refusal (UnsafeCheckpointError naming the file) by both;
- "harmless": the damage changed nothing a reader uses (a bit in COMPLETE's timestamp, say): both pick
  the newest checkpoint and load the same state as from the undamaged one.
Anything else (a raw exception, a refusal naming no file, a fallback by one reader but not the other, a
damaged file loaded) is "escaped", with the exception. The readers of weights (open_source's default scope)
open only meta.json, COMPLETE and model.safetensors: damage to one of those must meet them as it meets the
trainer, and damage to any other file must leave them the newest checkpoint with its exact weights.
Used by test_fault_fuzz.py and bench/fault_fuzz.py.
"""

from __future__ import annotations

import logging
import random
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from armd_scale.checkpoints.safe_load import UnsafeCheckpointError
from armd_scale.checkpoints.source import open_source
from armd_scale.checkpoints.weights import full_state, saved_module_state
from armd_scale.config import ConfigError, load_config
from armd_scale.data.tokenizers.ref import TokenizerRef
from armd_scale.train.checkpoint import Checkpointer
from armd_scale.train.distributed import DistInfo

# bytes kept: none, one, 5/20/50 KB (what an interrupted rsync or cp leaves), half, all but the last byte
TRUNCATE_TO = (0, 1, 5_000, 20_000, 50_000, 0.5, -1)


@dataclass(frozen=True)
class Case:
    file: str  # relative to the step folder
    kind: str  # "flip" (anywhere), "flip-pickle" (in a torch file's pickle stream) or "truncate"
    at: int  # the bit flipped, or the size kept

    def __str__(self) -> str:
        return f"{self.file} {self.kind} {self.at}"


def cases(folder: Path, flips: int = 50, seed: int = 0) -> Iterator[Case]:
    """For each file a save writes: `flips` random single-bit flips anywhere, `flips` more in the pickle
    stream of a torch file, then truncations to the TRUNCATE_TO sizes (those below the file's size)."""
    rng = random.Random(seed)
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        size = path.stat().st_size
        for _ in range(flips):
            yield Case(path.name, "flip", rng.randrange(size * 8))
        start, end = _pickle_stream(path)
        for _ in range(flips if end > start else 0):  # the pickle stream (data.pkl) of a torch zip file
            yield Case(path.name, "flip-pickle", rng.randrange(start * 8, end * 8))
        for keep in TRUNCATE_TO:
            at = size + keep if keep == -1 else int(size * keep) if isinstance(keep, float) else keep
            if at < size:
                yield Case(path.name, "truncate", at)


def _pickle_stream(path: Path) -> tuple[int, int]:
    """Where the bytes of a torch zip file's data.pkl lie (stored, not compressed); (0, 0) for other files."""
    import struct
    import zipfile

    if not zipfile.is_zipfile(path):
        return 0, 0
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    return start, start + info.compress_size


def damage(path: Path, case: Case) -> None:
    if case.kind.startswith("flip"):
        data = bytearray(path.read_bytes())
        data[case.at // 8] ^= 1 << (case.at % 8)
        path.unlink()  # a new inode: nothing mapped from the pristine copy changes under a reader
        path.write_bytes(bytes(data))
    else:
        with open(path, "r+b") as f:
            f.truncate(case.at)


def classify(pristine: Path, work: Path, case: Case, reference: dict[str, torch.Tensor], cfg) -> tuple[str, str]:
    """(outcome, detail) of one case on a fresh copy of `pristine` (a run directory) at `work`."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    ckpts = work / "checkpoints"
    newest, older = sorted(p.name for p in ckpts.iterdir() if p.name.startswith("step_"))[-2:][::-1]
    bad = ckpts / newest / case.file
    damage(bad, case)
    named = (str(bad), str(ckpts / newest))

    def names_it(text: str) -> bool:
        return any(n in text for n in named)

    # the tools: open_source on the run directory, checking the whole folder
    log = _Capture()
    logging.getLogger("armd_scale.checkpoints.source").addHandler(log)
    try:
        source = open_source(work, scope="folder")
        tool = "fallback" if source.folder.name == older else "newest"
        if tool == "fallback" and not names_it(log.text):
            return "escaped", f"tools fell back naming nothing: {log.text!r}"
        if tool == "newest" and saved_module_state(source).keys() != reference.keys():
            return "escaped", "tools loaded a damaged state"
        if tool == "newest" and not all(torch.equal(saved_module_state(source)[k], v) for k, v in reference.items()):
            return "escaped", "tools loaded changed weights"
    except UnsafeCheckpointError as e:
        tool = "refused"
        if not names_it(str(e)):
            return "escaped", f"tools refused naming no file: {e}"
    except Exception as e:  # noqa: BLE001 - anything else escaped
        return "escaped", f"tools: {type(e).__name__}: {str(e)[:300]}"
    finally:
        logging.getLogger("armd_scale.checkpoints.source").removeHandler(log)

    # the readers of weights, before the trainer moves a damaged folder aside
    escaped = _readers_of_weights(work, case, older, tool, reference, names_it)
    if escaped:
        return "escaped", escaped

    # the trainer: the resume plan (sets a damaged folder aside)
    try:
        plan = Checkpointer(
            work, cfg, DistInfo(0, 1, 0, torch.device("cpu"), "gloo"), tokenizer=_tokenizer(ckpts / older)
        ).plan_resume()
        trainer = "fallback" if plan.tag == older else "newest"
        if trainer == "fallback" and not (ckpts / f"{newest}.corrupt").exists():
            return "escaped", "trainer fell back without setting the damaged folder aside"
    except ConfigError as e:
        if "refusing to load" in str(e) and names_it(str(e)):
            trainer = "refused"
        elif "cannot resume" in str(e) and case.file == "meta.json":  # the config/tokenizer it records changed
            trainer = "refused-config"
        else:
            return "escaped", f"trainer: {str(e)[:300]}"
    except Exception as e:  # noqa: BLE001
        return "escaped", f"trainer: {type(e).__name__}: {str(e)[:300]}"

    if tool != trainer and not (tool == "newest" and trainer == "refused-config"):
        return "escaped", f"tools: {tool}, trainer: {trainer}"
    return {"newest": "harmless"}.get(tool, tool), trainer


def _readers_of_weights(work: Path, case: Case, older: str, tool: str, reference, names_it) -> str | None:
    """Why the readers of weights (open_source, default scope, then full_state) got `case` wrong, or None."""
    reads = case.file in ("meta.json", "COMPLETE", "model.safetensors")
    log = _Capture()
    logging.getLogger("armd_scale.checkpoints.source").addHandler(log)
    try:
        source = open_source(work)
        outcome = "fallback" if source.folder.name == older else "newest"
        if outcome == "fallback" and not names_it(log.text):
            return f"readers of weights fell back naming nothing: {log.text!r}"
        if outcome == "newest":
            state = full_state(source)
            tied = source.weights.tied if source.weights is not None else {}
            if {*state, *tied} != reference.keys() or not all(torch.equal(v, reference[k]) for k, v in state.items()):
                return "readers of weights loaded changed weights"
    except UnsafeCheckpointError as e:
        outcome = "refused"
        if not names_it(str(e)):
            return f"readers of weights refused naming no file: {e}"
    except Exception as e:  # noqa: BLE001 - anything else escaped
        return f"readers of weights: {type(e).__name__}: {str(e)[:300]}"
    finally:
        logging.getLogger("armd_scale.checkpoints.source").removeHandler(log)
    expected = tool if reads else "newest"  # a file they never open cannot concern them
    return None if outcome == expected else f"readers of weights: {outcome}, tools: {tool}"


def run(pristine: Path, scratch: Path, flips: int = 50, seed: int = 0, say=print) -> Counter:
    """Every case over the newest checkpoint of the run directory `pristine`; counts per (file, kind, outcome)."""
    ckpts = pristine / "checkpoints"
    newest = sorted(p for p in ckpts.iterdir() if p.name.startswith("step_") and (p / "COMPLETE").is_file())[-1]
    reference = saved_module_state(open_source(newest))
    reference = {k: v.clone() for k, v in reference.items()}
    import json

    meta = json.loads((newest / "meta.json").read_text())
    cfg = load_config(overrides=_overrides(meta["config"]))
    counts: Counter = Counter()
    for case in cases(newest, flips, seed):
        outcome, detail = classify(pristine, scratch, case, reference, cfg)
        counts[(case.file, case.kind, outcome)] += 1
        if outcome == "escaped":
            say(f"ESCAPED {case}: {detail}")
    shutil.rmtree(scratch, ignore_errors=True)
    return counts


def _overrides(config: dict, prefix: str = "") -> list[str]:
    """The dotted overrides that rebuild a saved config (so the trainer's compatibility check passes)."""
    import json

    out = []
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "parallel.deepspeed":
            out += _overrides(v, key + ".")
        elif v is not None and not isinstance(v, dict | list):
            out.append(f"{key}={v}")
        elif isinstance(v, list):
            out.append(f"{key}={json.dumps(v)}")
    return out


def _tokenizer(folder: Path) -> TokenizerRef:
    import json

    return TokenizerRef(None, "", json.loads((folder / "meta.json").read_text())["tokenizer_sha256"])


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += record.getMessage() + "\n"
