"""A single very long line (a 50 MB line, a small .gz that expands to a 300 MB line): shards and
tokenizer training stay within a bounded memory instead of tens of times the line's size."""

from __future__ import annotations

import gzip
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from armd_scale.data.prepare.textio import iter_documents
from armd_scale.data.tokenizers.load import load_tokenizer
from tests.data.conftest import shard_stream

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "theta", "kappa", "lambda", "omicron"]


def _long_line(n_chars: int) -> str:
    unit = " ".join(WORDS[i % 7] + WORDS[i % 10] for i in range(97)) + " "
    return (unit * (n_chars // len(unit) + 1))[:n_chars].strip()


def _short_lines(n: int, offset: int) -> list[str]:
    return [" ".join(WORDS[(i * 3 + j + offset) % 10] for j in range(12)) for i in range(n)]


def _peak_mib(code: str, cwd: Path) -> tuple[int, str]:
    """Run `code` in a fresh interpreter with warnings logged to stderr; its peak RSS (VmHWM: ru_maxrss
    keeps the forked parent's size across exec) in MiB, and its stderr."""
    if not Path("/proc/self/status").is_file():
        pytest.skip("reads the peak RSS (VmHWM) from /proc, which this system lacks")
    setup = "import logging\nlogging.basicConfig(level=logging.WARNING)\n"
    peak = "import re\nprint(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024)\n"
    code = setup + code + "\n" + peak
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.split()[-1]), proc.stderr


def test_an_over_long_line_is_sharded_in_bounded_memory_and_its_text_is_kept(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    """An 8 MB line once cost ~55x its size while being encoded whole (494 MiB peak, 1 MiB shards); it is cut into
    pieces of MAX_PIECE_CHARS characters (at spaces) joined without a separator, so the text of
    the shards is the input's, and the peak is a few times the line (the reader still holds it)."""
    docs = [*_short_lines(50, 0), _long_line(8 << 20), *_short_lines(50, 1)]
    src = tmp_path / "corpus.txt"
    src.write_text("\n".join(docs) + "\n")
    out = tmp_path / "set"
    code = (
        "from armd_scale.data.prepare.shards import build_shards\n"
        f"build_shards([{str(src)!r}], {str(out)!r}, {str(tokenizer_dir)!r}, seq_len=16, doc_split='line',"
        " shard_size_mb=1)\n"
    )
    peak, stderr = _peak_mib(code, tmp_path)
    assert peak < 150, f"peak RSS {peak} MiB for one 8 MB line"  # old code: 494 MiB, now ~90
    tok = load_tokenizer(str(tokenizer_dir))
    decoded = tok.decode(shard_stream(str(out / "train")).tolist())  # eos decodes to nothing
    whole = "".join(docs)
    assert len(decoded) > len(whole) - 200 and whole.startswith(decoded)


def test_tokenizer_training_skips_an_over_long_line_without_holding_it(tmp_path: Path) -> None:
    """A .gz that expands to a 40 MB line: SentencePiece drops lines over
    max_sentence_length anyway, but the old reader held the line (and its copies) first:
    217 MiB peak, a MemoryError for 300 MB lines. It is now skipped while reading, in bounded pieces, with
    one warning that counts such lines; the model is the one trained without the line."""
    lines = _short_lines(400, 0)
    with_long = tmp_path / "long.txt.gz"
    with gzip.open(with_long, "wt", compresslevel=1) as f:
        f.write("\n".join([*lines[:200], _long_line(40 << 20), *lines[200:]]) + "\n")
    without = tmp_path / "short.txt"
    without.write_text("\n".join(lines) + "\n")
    code = (
        "from armd_scale.data.prepare.tokenizer_training import train_tokenizer\n"
        f"for src, out in (({str(with_long)!r}, 'with'), ({str(without)!r}, 'without')):\n"
        "    train_tokenizer([src], out, vocab_size=64, doc_split='line', num_threads=1)\n"
    )
    peak, stderr = _peak_mib(code, tmp_path)
    assert peak < 120, f"peak RSS {peak} MiB for one 40 MB line"  # old code: 217 MiB, now ~50
    warnings = [line for line in stderr.splitlines() if "longer than" in line]
    assert len(warnings) == 1 and re.search(
        r"long\.txt\.gz: 1 line\(s\) longer than 32768 bytes.*line 201", warnings[0]
    )
    infos = [json.loads((tmp_path / d / "tokenizer.json").read_text()) for d in ("with", "without")]
    assert infos[0]["trained_on"]["sentences"] == infos[1]["trained_on"]["sentences"] == 400
    assert infos[0]["sha256"] == infos[1]["sha256"]


def test_a_long_json_line_is_skipped_and_counted_in_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "docs.jsonl"
    records = ["first", "x " * 5000, "third", "y" * 3000, "fifth"]
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in records))
    with caplog.at_level(logging.WARNING):
        got = list(iter_documents(str(src), max_line_bytes=1000))
    assert got == ["first", "third", "fifth"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{src}: 2 line(s) longer than 1000 bytes were skipped (first: line 2)"
    ]
    assert list(iter_documents(str(src))) == records  # without a limit, every record
