#!/usr/bin/env bash
# Fill .whl/ (repo root, git-ignored) with the wheels a GPU machine without a package registry needs to
# run bench/gpu_check.sh: Python 3.12, manylinux x86_64, one version of each, exactly the run-time
# packages of this stack that such a machine's image lacks.
#
#   bash bench/gpu_wheels.sh            # on a machine that reaches a registry; idempotent
#
# The image is assumed to ship torch (with triton), transformers, tokenizers, sentencepiece,
# safetensors, fsspec, numpy, pyarrow, psutil, matplotlib, msgpack, ninja, py-cpuinfo, nvidia-ml-py,
# huggingface-hub, tqdm, pyyaml, einops and packaging; what it lacks and the stack imports at run time:
#   deepspeed and the requirements of deepspeed's that are not in that list (hjson, pydantic with
#   pydantic-core, annotated-types and typing-inspection), zstandard.
# Not wandb (the check runs with log.wandb=off, which never imports it), not flash-attn (optional).
# The versions are those the tests run with (`pip show` where the test suite runs). deepspeed has
# only a source distribution: it is built here as a pure-Python wheel (DS_BUILD_OPS=0, no compiled ops:
# the stack uses torch's AdamW), which needs deepspeed's build requirements (torch) in this Python.
#
# bench/gpu_check.sh installs from .whl/ the wheels whose packages its Python lacks (--no-index), so
# carry .whl/ with the working tree. The total must stay under 20 MiB (checked: exit 1 above).
#
# Environment: PYTHON (default python3, else python): the interpreter whose pip downloads and builds.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${GPU_WHEELS:-$REPO/.whl}
LIMIT_MIB=20
if [[ -z "${PYTHON:-}" ]]; then
  PYTHON=$(command -v python3 || command -v python || true)
fi
if [[ -z "$PYTHON" ]]; then
  echo "gpu_wheels: no python3 or python on PATH (set PYTHON)" >&2
  exit 1
fi

# name==version, as pip spells them; the file name prefix is the normalised name (PEP 427).
PINS=(
  deepspeed==0.19.8
  hjson==3.1.0
  pydantic==2.13.4
  pydantic-core==2.46.4
  annotated-types==0.7.0
  typing-inspection==0.4.2
  zstandard==0.25.0
)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

mkdir -p "$DEST"
prefix() {  # deepspeed==0.19.8 -> deepspeed-0.19.8- ; pydantic-core==2.46.4 -> pydantic_core-2.46.4-
  local name=${1%%==*} version=${1##*==}
  name=$(echo "$name" | tr 'A-Z.-' 'a-z__')
  echo "$name-$version-"
}

wanted=()
for pin in "${PINS[@]}"; do
  wanted+=("$(prefix "$pin")")
done

# Drop what is not in the list (another version, a package no longer needed): one version of each.
shopt -s nullglob
for file in "$DEST"/*; do
  base=$(basename "$file")
  keep=0
  for p in "${wanted[@]}"; do
    [[ "$base" == "$p"*.whl ]] && keep=1
  done
  if [[ $keep == 0 ]]; then
    echo "gpu_wheels: removing $base (not in the list)"
    rm -rf "$file"
  fi
done

platform_args=()
for p in "${PLATFORMS[@]}"; do
  platform_args+=(--platform "$p")
done
for pin in "${PINS[@]}"; do
  p=$(prefix "$pin")
  have=("$DEST/$p"*.whl)
  if (( ${#have[@]} )); then
    continue
  fi
  if [[ ${pin%%==*} == deepspeed ]]; then
    echo "gpu_wheels: building $pin as a pure-Python wheel (DS_BUILD_OPS=0)"
    DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation "$pin" -w "$DEST"
  else
    echo "gpu_wheels: downloading $pin"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platform_args[@]}" -d "$DEST" "$pin"
  fi
  have=("$DEST/$p"*.whl)
  if (( ${#have[@]} != 1 )); then
    echo "gpu_wheels: FAILED: expected one wheel $p*.whl in $DEST after fetching $pin, found ${#have[@]}" >&2
    exit 1
  fi
done

# deepspeed's run-time requirements: each one is either in the image (see the list above) or here.
ds=("$DEST"/deepspeed-*.whl)
image="einops msgpack ninja numpy packaging psutil py-cpuinfo torch tqdm nvidia-ml-py"
missing=""
while read -r req; do
  name=$(echo "$req" | sed -E 's/^Requires-Dist: *([A-Za-z0-9_.-]+).*/\1/' | tr 'A-Z_.' 'a-z--')
  [[ "$req" == *"extra =="* ]] && continue
  [[ " $image " == *" $name "* ]] && continue
  have=("$DEST/$(echo "$name" | tr - _)-"*.whl)
  (( ${#have[@]} )) || missing+=" $name"
done < <("$PYTHON" - "${ds[0]}" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    for line in z.read(meta).decode().splitlines():
        if line.startswith("Requires-Dist:"):
            print(line)
EOF
)
if [[ -n "$missing" ]]; then
  echo "gpu_wheels: FAILED: deepspeed requires$missing, neither in the image's list nor in $DEST" >&2
  exit 1
fi

bytes=$(cat "$DEST"/*.whl | wc -c)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "gpu_wheels: ${#PINS[@]} wheels in $DEST, $mib MiB in all:"
for file in "$DEST"/*.whl; do
  echo "  $(basename "$file")"
done
if (( bytes > LIMIT_MIB * 1048576 )); then
  echo "gpu_wheels: FAILED: $mib MiB is above the $LIMIT_MIB MiB limit (the working tree travels within 64 MiB)" >&2
  exit 1
fi
