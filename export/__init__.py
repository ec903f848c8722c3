"""Training checkpoints in, verified TF Serving versions out (`make export`, docs/export.md).

servable.py writes one version from a ServableSpec (signatures.py, warmup.py, verify.py do its
parts); checkpoints.py detects the checkpoint kind and picks its loader (keras_files.py,
tf2_checkpoint.py, tf1_checkpoint.py, architectures.py; the types they share are in
checkpoint_types.py); exporter.py and cli.py are `python -m export`; demo.py (entry point),
demo_config.py, training.py, shapes.py and benchmodel.py build the project's own models;
testing.py writes tiny versions for other packages' tests. errors.py is the one error
hierarchy (and `tf_errors`, where TensorFlow's errors become ours); progress.py reports progress.
"""
