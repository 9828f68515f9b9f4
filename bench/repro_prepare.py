"""Prepare the reproduction study's training text from ../shared/corpora into a scratch folder.

The prose corpora are used as they are except for three fixes, each written to OUT as plain UTF-8
`.txt` files (the corpora themselves are never modified or copied into the repository):

- brown: every token is `word/tag`; the tag after the *last* slash is dropped (so `and/or/cc`
  becomes `and/or`), and the corpus's TeX-style quotes `` and '' become a plain double quote. One
  sentence a line, blank lines between paragraphs, as in the source.
- janeausten: emma, persuasion and sensesensibility are the same novels as gutenberg_nltk's
  austen-emma/-persuasion/-sense (another edition), so only the other three novels are kept.
- state_union: a few files are Latin-1; every file is decoded as UTF-8, else Latin-1, and written
  as UTF-8.

gutenberg_nltk, inaugural and tinyshakespeare are copied through the same decoder. lm1b/ and
wikitext-2/ are out-of-domain validation sets and are never written here.

    python bench/repro_prepare.py --corpora ../shared/corpora --out /tmp/armd_repro/text

Prints one line per source with its file count and size, and writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

PROSE = ("gutenberg_nltk", "janeausten", "brown", "state_union", "inaugural", "tinyshakespeare")
# Novels that gutenberg_nltk already holds (as austen-emma.txt, austen-persuasion.txt, austen-sense.txt).
AUSTEN_DUPLICATES = {"emma.txt", "persuasion.txt", "sensesensibility.txt"}
BROWN_FILE = re.compile(r"^c[a-r]\d\d$")  # ca01 ... cr09; skips README and CONTENTS


def read_text(path: Path) -> str:
    """File contents as text: UTF-8 if it decodes, else Latin-1; CRLF/CR become LF."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def strip_brown_tags(text: str) -> str:
    """`The/at jury/nn said/vbd ./.` -> `The jury said .`, line structure kept."""
    lines = []
    for line in text.split("\n"):
        words = [tok.rsplit("/", 1)[0] for tok in line.split()]
        words = ['"' if w in ("``", "''") else w for w in words]
        lines.append(" ".join(words))
    # collapse runs of blank lines to one paragraph break
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def source_files(corpora: Path, name: str) -> list[Path]:
    folder = corpora / name
    if name == "brown":
        return sorted(p for p in folder.iterdir() if BROWN_FILE.match(p.name))
    files = sorted(folder.glob("*.txt"))
    if name == "janeausten":
        files = [p for p in files if p.name not in AUSTEN_DUPLICATES]
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", required=True, type=Path, help="the shared corpora folder")
    ap.add_argument("--out", required=True, type=Path, help="scratch folder for the cleaned .txt files")
    args = ap.parse_args(argv)
    missing = [name for name in PROSE if not (args.corpora / name).is_dir()]
    if missing:
        print(f"error: {args.corpora} lacks the prose folders {', '.join(missing)}", file=sys.stderr)
        return 2
    summary = {}
    for name in PROSE:
        out_dir = args.out / name
        out_dir.mkdir(parents=True, exist_ok=True)
        files = source_files(args.corpora, name)
        size = 0
        for path in files:
            text = read_text(path)
            if name == "brown":
                text = strip_brown_tags(text)
            data = text.encode("utf-8")
            (out_dir / (path.stem + ".txt")).write_bytes(data)
            size += len(data)
        summary[name] = {"files": len(files), "bytes": size}
        print(f"{name:16s} {len(files):4d} files {size / 1e6:6.2f} MB")
    total = sum(v["bytes"] for v in summary.values())
    print(f"{'total':16s} {sum(v['files'] for v in summary.values()):4d} files {total / 1e6:6.2f} MB")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
