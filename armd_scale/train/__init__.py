"""Training: DeepSpeed engine, the core loop, checkpoints, metrics and preemption handling."""

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: saved a complete checkpoint and stopped early; requeue to continue
EXIT_INTERRUPTED = 130  # a second Ctrl-C: aborted at once, no checkpoint (128 + SIGINT, the shell's convention)
