"""Training checkpoints in, verified TF Serving versions out (`make export`, docs/export.md).

servable.py writes one version (signatures.py, warmup.py, verify.py do its parts);
checkpoints.py detects and loads the checkpoint kinds (keras_files.py, tf2_checkpoint.py,
tf1_checkpoint.py, architectures.py); exporter.py and cli.py are `python -m export`;
demo.py/training.py/shapes.py and benchmodel.py build the project's own models;
testing.py writes tiny versions for other packages' tests.
"""
