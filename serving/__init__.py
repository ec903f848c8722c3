"""The model server of a dyno: `python -m serving` (launcher.py) starts stock
tensorflow_model_server when it is installed, else the local stand-in, with the project's flags
(model_server.flags, batching.config, monitoring.config) and the thread counts a dyno needs.

What ships: this folder's files. `serving/local/` is the TF-Serving-compatible local model
server for machines without the stock binary (tests, CI, `make run`, the bench); an image built
with the stock server does not contain it, and the launcher never imports it (`make lint`).
"""
