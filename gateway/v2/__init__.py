"""The Open Inference Protocol (KServe V2) on the gateway: codec.py reads and writes its bodies,
dataplane.py maps them onto the predictor, routes.py is the thin Flask blueprint under /v2."""
