"""Run `armd` in a subprocess that stops at a chosen point, deterministically, for fault injection.

    python -m tests.hold armd_scale.train.loop:open_train_data:before:1 -- train key=value ...

wraps the named function (`module:qualified.name:before|after|kill-before|kill-after:N`) so that its
N-th call, before or after running,
- hold: writes one line to the file descriptor in $HOLD_READY_FD and then blocks reading $HOLD_GO_FD
  until the test writes to it (the test sends its signals in between);
- kill: sends itself SIGKILL (a `kill -9` at exactly that point).
Pipes, not sleeps, synchronise the two processes; if the child dies, the test's read sees EOF.
`Hold` is the test side.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import select
import signal
import subprocess
import sys
from collections.abc import Sequence


def install(spec: str) -> None:
    module_name, qualname, when, nth = spec.split(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = {"n": 0}

    def stop_here() -> None:
        if when.startswith("kill"):
            os.kill(os.getpid(), signal.SIGKILL)
        ready, go = int(os.environ["HOLD_READY_FD"]), int(os.environ["HOLD_GO_FD"])
        os.write(ready, b"held\n")
        os.read(go, 1)  # blocks until the test releases us

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls["n"] += 1
        hit = calls["n"] == int(nth)
        if hit and when.endswith("before"):
            stop_here()
        result = original(*args, **kwargs)
        if hit and when.endswith("after"):
            stop_here()
        return result

    if isinstance(original, staticmethod):  # pragma: no cover - not needed so far
        raise TypeError("static methods are not supported")
    setattr(owner, name, wrapper)


class Hold:
    """Start `python -m tests.hold SPEC -- ARGV` and wait for it to reach the point."""

    def __init__(self, spec: str | Sequence[str], argv: Sequence[str], env: dict[str, str], cwd: str | None = None):
        specs = [spec] if isinstance(spec, str) else list(spec)  # several points: wait_held/release for each
        self.ready_r, ready_w = os.pipe()
        go_r, self.go_w = os.pipe()
        env = {**env, "HOLD_READY_FD": str(ready_w), "HOLD_GO_FD": str(go_r)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.hold", *specs, "--", *argv],
            env=env,
            cwd=cwd,
            pass_fds=(ready_w, go_r),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        os.close(ready_w)  # only the child holds the write end now: its death reads as EOF here
        os.close(go_r)

    def wait_held(self, timeout: float = 300) -> None:
        readable, _, _ = select.select([self.ready_r], [], [], timeout)
        line = os.read(self.ready_r, 64) if readable else b""
        if line != b"held\n":
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError(f"the process did not reach the hold point (read {line!r}):\n{out[-4000:]}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def release(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            os.write(self.go_w, b"g")

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            for fd in (self.ready_r, self.go_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        return self.proc.returncode, out


def main(argv: Sequence[str]) -> int:
    split = list(argv).index("--")
    for spec in argv[:split]:
        install(spec)
    from armd_scale.cli import main as armd

    return armd(list(argv[split + 1 :]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
