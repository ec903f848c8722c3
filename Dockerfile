# syntax=docker/dockerfile:1
# One image for Heroku: stock TensorFlow Serving (CPU) beside the thin Python gateway and the
# S3 sync, all under supervisord. Nothing the dyno's own processes run imports TensorFlow.
#
# Heroku builds this file with its defaults. `make image` builds it too: as it is where a
# registry is reachable, and where none is (the development machines, CI) with two build
# arguments that swap only what cannot be pulled (deploy/image.py):
#   BASE_IMAGE    a Debian 12 + Python 3.11 root file system made from Debian's packages;
#   MODEL_SERVER  `local`: the project's TF-Serving-compatible server (serving/local/, Python
#                 TensorFlow in /app/.venv) instead of the stock binary; the launcher picks it
#                 exactly as it does on any machine without the stock binary.

# The newest stock release with an image tag (2.20.0, April 2026, built on TensorFlow 2.20). The
# exports are written with TensorFlow 2.21 and load in its graph-mode (C++) loader; stock 2.20
# itself has not loaded them (no registry where they are built). To change it:
# edit this line (or build with --build-arg TF_SERVING_VERSION=x.y.z) and push.
ARG TF_SERVING_VERSION=2.20.0
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG MODEL_SERVER=stock

# The model server stage is a file tree laid over the final image's root. Stock: the binary
# alone; the launcher (python -m serving) finds it at DYNOSERVE_MODEL_SERVER_BIN and passes it
# the same flags and config files the local server gets.
FROM tensorflow/serving:${TF_SERVING_VERSION} AS tfserving
FROM scratch AS model-server-stock
COPY --from=tfserving /usr/bin/tensorflow_model_server /usr/local/bin/tensorflow_model_server

# Local: the local server's code (serving/local/) and the model side of requirements/ in
# /app/.venv, where the launcher looks for an interpreter with TensorFlow when the stock binary
# is missing. Not built by Heroku (an unused stage); 1.65 GB more on disk, and Python
# TensorFlow's memory (README, Sizing).
FROM ${BASE_IMAGE} AS local-server-venv
COPY requirements/gateway.txt requirements/model.txt requirements/model-nodeps.txt /tmp/requirements/
RUN python -m venv /app/.venv \
 && /app/.venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/requirements/model.txt \
 && /app/.venv/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps -r /tmp/requirements/model-nodeps.txt
FROM scratch AS model-server-local
COPY --from=local-server-venv /app/.venv /app/.venv
COPY serving/local /app/serving/local

# hadolint ignore=DL3006
FROM model-server-${MODEL_SERVER} AS model-server

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    DYNOSERVE_RUNTIME_PYTHON=/opt/venv/bin/python \
    DYNOSERVE_MODEL_PYTHON=/opt/venv/bin/python \
    DYNOSERVE_MODEL_BASE_PATH=/models \
    DYNOSERVE_RUN_DIR=/tmp/dynoserve \
    DYNOSERVE_MODEL_SERVER_GRPC_PORT=8500 \
    DYNOSERVE_MODEL_SERVER_REST_PORT=8501 \
    DYNOSERVE_MODEL_SERVER_BIN=/usr/local/bin/tensorflow_model_server

# The model server stage holds only its own files (a scratch stage), laid over the root.
# hadolint ignore=DL3067
COPY --from=model-server / /

WORKDIR /app
COPY requirements/gateway.txt requirements/gateway.txt
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r requirements/gateway.txt \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check grpcio-tools==1.85.1

COPY gateway gateway
# The launcher and its flag and config files, not serving/local/ (the model server stage's).
COPY serving/*.py serving/*.flags serving/*.config serving/
COPY sync sync
COPY dyno dyno
COPY modelrepo modelrepo
COPY envsettings envsettings
COPY supervisord.conf supervisord.conf
# Generate the gateway's protobuf classes, then drop the generator: it is a build-time tool.
# /app stays root's and read-only to the dyno's user; only /models and the run dir are written.
RUN /opt/venv/bin/python -m gateway.protogen \
 && /opt/venv/bin/pip uninstall -y grpcio-tools \
 && mkdir -p /models /tmp/dynoserve \
 && groupadd --gid 10001 dyno \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin dyno \
 && chmod 1777 /models /tmp/dynoserve

# Heroku runs containers as a non-root user (not necessarily this one, so numeric here) and
# sets $PORT; only the gateway binds it. /models and the run dir are world-writable for that.
# `python -m dyno` runs supervisord with every program's log on this process's stdout, whoever
# owns it, and passes it the signals (see dyno/entrypoint.py and supervisord.conf).
USER 10001:10001
CMD ["/opt/venv/bin/python", "-m", "dyno"]
