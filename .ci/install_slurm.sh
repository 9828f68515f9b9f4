#!/usr/bin/env bash
# Install the Slurm and munge binaries the integration tests need (Debian/Ubuntu).
#
# Why a separate script: CI (`.ci/run`) and people reproducing CI by hand must end up with the
# same packages, and running it twice must be cheap, so it does nothing when every binary is
# already present and only runs `apt-get update` when the package lists cannot supply them.
# It is quiet on success (apt output goes to a log that is printed only on failure) and exits
# non-zero on any failure. The packages' own system services are not used by the tests (they
# start private daemons in a temporary directory), so nothing is enabled or started here.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
BINARIES=(slurmctld slurmd sbatch srun scontrol sinfo squeue scancel munged mungekey)

missing_binaries() {
  local b missing=()
  for b in "${BINARIES[@]}"; do
    command -v "$b" >/dev/null 2>&1 || [[ -x "/usr/sbin/$b" ]] || missing+=("$b")
  done
  echo "${missing[*]:-}"
}

if [[ -z "$(missing_binaries)" ]]; then
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_slurm.sh: apt-get not found; install ${PACKAGES[*]} by hand (missing: $(missing_binaries))" >&2
  exit 1
fi

SUDO=()
if [[ "$(id -u)" != 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo -n); else
    echo "install_slurm.sh: must run as root (or with passwordless sudo)" >&2
    exit 1
  fi
fi

LOG="$(mktemp -t install_slurm.XXXXXX.log)"
trap 'rm -f "$LOG"' EXIT
fail() {
  echo "install_slurm.sh: $1" >&2
  tail -n 40 "$LOG" >&2 || true
  exit 1
}

export DEBIAN_FRONTEND=noninteractive
apt_install() {
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${PACKAGES[@]}" >>"$LOG" 2>&1
}

# Update the package lists only when they are absent or cannot resolve the packages: a fresh
# container usually has empty lists, a developer machine usually has current ones.
if ! apt-cache show "${PACKAGES[@]}" >/dev/null 2>&1 || ! apt_install; then
  "${SUDO[@]}" apt-get update -q >>"$LOG" 2>&1 || fail "apt-get update failed"
  apt_install || fail "apt-get install ${PACKAGES[*]} failed"
fi

# Debian's postinst scripts may start the system munge/slurm services where an init system runs;
# they are harmless to the tests (which use their own sockets and ports), so they are left alone.
left="$(missing_binaries)"
[[ -z "$left" ]] || fail "installed ${PACKAGES[*]} but still missing: $left"
exit 0
