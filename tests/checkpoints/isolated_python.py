"""A fresh virtual environment that has every installed distribution except armd_scale.

Why not `python -m venv --system-site-packages`: armd_scale is installed into those site-packages
(editable: a `.pth` hook; or a plain package folder), so it would stay importable there and a test
of "loads without armd_scale" would prove nothing. Why not `pip install transformers torch` into an
empty venv: no network in CI, and minutes of copying. So the venv's own site-packages holds a
symbolic link to each entry of this interpreter's site-packages except armd_scale's own: its
package folder, its dist-info, its editable finder, and every `.pth` file (a `.pth` can put any
folder on sys.path; none of the libraries the export needs relies on one). The venv does not see the
system or user site-packages themselves, and callers clear PYTHONPATH, so what it imports is exactly
what was linked.
"""

from __future__ import annotations

import os
import site
import subprocess
import venv
from pathlib import Path

EXCLUDED_PREFIXES = ("armd_scale", "__editable__", "__pycache__")
EXCLUDED_SUFFIXES = (".pth", ".egg-link")


def _site_dirs() -> list[Path]:
    dirs = [Path(d) for d in site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(Path(site.getusersitepackages()))
    return [d for d in dirs if d.is_dir()]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that adds import paths."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE")}
    env.update(extra)
    return env


def python_without_armd_scale(where: Path) -> Path:
    """Create the environment at `where`; return its python. Raises AssertionError if armd_scale is
    importable there after all (the test would be meaningless)."""
    venv.EnvBuilder(with_pip=False, system_site_packages=False, symlinks=True).create(where)
    python = where / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
            env=clean_env(),
        ).stdout.strip()
    )
    for source in _site_dirs():
        for entry in sorted(source.iterdir()):
            name = entry.name
            if name.startswith(EXCLUDED_PREFIXES) or name.endswith(EXCLUDED_SUFFIXES):
                continue
            link = purelib / name
            if not link.exists() and not link.is_symlink():  # the first site dir wins, as on sys.path
                link.symlink_to(entry)
    probe = subprocess.run(
        [python, "-c", "import armd_scale"], capture_output=True, text=True, env=clean_env(), cwd=where.parent
    )
    assert probe.returncode != 0 and "No module named 'armd_scale'" in probe.stderr, (
        f"armd_scale is importable in {where}: {probe.stdout}{probe.stderr}"
    )
    return python
