"""Training: DeepSpeed engine, the core loop, checkpoints, metrics and preemption handling."""

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: saved a complete checkpoint and stopped early; requeue to continue
