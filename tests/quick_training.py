"""Config overrides that make a grader training run take seconds on a CPU (shared by the training tests)."""

QUICK = [
    "data.input_size=64",
    "data.workers=0",
    "model.filters_per_class=2",
    "model.init_max_images_per_class=8",
    "train.batch_size=8",
    "train.max_steps_per_epoch=3",
    "train.epochs=2",
    "train.early_stop_patience=0",
    "train.time_budget_s=null",  # cpu_demo's wall-clock budget off: epoch counts never depend on the machine
]


def killed_at_epoch(monkeypatch, epoch: int):
    """Make the engine's epoch ``epoch`` (0-based) raise KeyboardInterrupt, as a run killed there would
    stop; calling the returned function undoes it."""
    import spine_dfl.engine.loop as loop

    real = loop.train_epoch

    def train_epoch(task, net, opt, context, index, progress=False):
        if index == epoch:
            raise KeyboardInterrupt(f"killed in epoch {epoch + 1}")
        return real(task, net, opt, context, index, progress)

    monkeypatch.setattr(loop, "train_epoch", train_epoch)
    return lambda: monkeypatch.setattr(loop, "train_epoch", real)
