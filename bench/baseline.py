"""THE BASELINE, not Dynoserve: the 2019-style app the original experiment measured.

Flask under gunicorn (1 worker, 2 threads), the Keras model in the web process called with
`model.predict`, the image fetched with urllib3 and resized with Pillow. The weights are the
benchmark model's (export.benchmodel.build_classifier, same seed), so both answer alike.
Run by bench (gunicorn "bench.baseline:create_app()"); POST /predict {"image_url": ...}.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import urllib3
from flask import Flask, jsonify, request
from PIL import Image

from devtools.net import free_port, http_ok
from devtools.processes import VENV_PYTHON, ManagedProcess, python_env

WORKERS, THREADS = 1, 2


def create_app() -> Flask:
    """The whole 2019 app: model loaded at import, one route."""
    from export.benchmodel import INPUT_SIZE, build_classifier, labels

    model, names = build_classifier(), labels()
    pool = urllib3.PoolManager(maxsize=THREADS)
    app = Flask("baseline")

    @app.get("/healthz")
    def healthz() -> Any:
        return "ok"

    @app.post("/predict")
    def predict() -> Any:
        url = request.get_json(force=True)["image_url"]
        response = pool.request("GET", url, timeout=10.0)
        image = Image.open(io.BytesIO(response.data)).convert("RGB")
        pixels = np.asarray(
            image.resize(INPUT_SIZE[::-1], Image.Resampling.BILINEAR), dtype=np.float32
        )
        scores = model.predict(pixels[np.newaxis] / 127.5 - 1.0, verbose=0)[0]
        top = np.argsort(scores)[::-1][:5]
        return jsonify(predictions=[{"label": names[i], "score": float(scores[i])} for i in top])

    return app


def start_baseline(log_dir: Any) -> tuple[ManagedProcess, str]:
    """gunicorn serving the baseline on loopback, ready; returns the process and base URL."""
    port = free_port()
    argv = [str(VENV_PYTHON), "-m", "gunicorn", f"--workers={WORKERS}", f"--threads={THREADS}"]
    argv += [f"--bind=127.0.0.1:{port}", "--timeout=120", "bench.baseline:create_app()"]
    proc = ManagedProcess(argv, log_dir / "baseline.log", env=python_env())
    base = f"http://127.0.0.1:{port}"
    proc.start_ready(lambda: http_ok(base + "/healthz"), timeout=300)
    return proc, base
