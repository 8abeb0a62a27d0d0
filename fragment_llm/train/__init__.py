"""Training: the loop, optimizers and schedules, checkpoints, continuing a run (resume, fine-tune, loading
it for the tools), what a run reports, the hardware, ranks and the benchmark."""
