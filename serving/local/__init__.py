"""The TF-Serving-compatible local model server: `python -m serving.local [TF Serving flags]`.

A stand-in for stock tensorflow_model_server where it cannot be installed: the same flags, config
files, gRPC and REST APIs, version policy, labels, batching and warmup, in Python with TensorFlow
(docs/serving.md lists where it deviates). It shares only the flag parser and the environment
settings with the launcher (serving.flags, serving.settings).
"""
