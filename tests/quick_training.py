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
