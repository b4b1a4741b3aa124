"""Training and inference engine: device, distributed setup, checkpoints, the training loop, prediction.

Works on samples and the model; it knows manifests only through ``spine_dfl.data``. Import the
submodules (``spine_dfl.engine.train`` ...); this package imports nothing itself, so importing one
part does not pull in the others.
"""
