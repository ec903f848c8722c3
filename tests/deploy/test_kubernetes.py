"""deploy/kubernetes/: valid against the Kubernetes API schemas (kubernetes-validate, offline; no
cluster runs here) and in step with the image: probes, shutdown, writable paths, app.json's
environment, the bucket Secret, and the resources of the README's sizing table."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from deploy.image import STOP_TIMEOUT_S
from tests.e2e.test_packaging import dockerfile_env
from tests.support import REPO_ROOT

MANIFESTS = sorted((REPO_ROOT / "deploy" / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSION = "1.30.0"  # the oldest version still supported by the big clouds (2026)


def load(name: str) -> dict[str, Any]:
    return dict(yaml.safe_load((REPO_ROOT / "deploy" / "kubernetes" / name).read_text()))


def container() -> dict[str, Any]:
    return dict(load("deployment.yaml")["spec"]["template"]["spec"]["containers"][0])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_manifest_is_valid_kubernetes(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        for version in (KUBERNETES_VERSION, kubernetes_validate.latest_version()):
            kubernetes_validate.validate(document, version, strict=True)


def test_the_validator_rejects_a_wrong_field() -> None:
    broken = load("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_probes_are_the_gateways_health_routes_on_port() -> None:
    spec = container()
    port = spec["ports"][0]
    env = {item["name"]: item.get("value") for item in spec["env"]}
    assert env["PORT"] == str(port["containerPort"])
    assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    startup = spec["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] <= 60  # Heroku's R10


def supervisord_stop_budget() -> int:
    """The slowest ordered stop: every program's stopwaitsecs, one after the other."""
    text = (REPO_ROOT / "supervisord.conf").read_text()
    return sum(int(s) for s in re.findall(r"^stopwaitsecs=(\d+)$", text, re.M))


def test_shutdown_matches_the_dynos() -> None:
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == STOP_TIMEOUT_S == 30
    pause = int(container()["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pause + supervisord_stop_budget() < pod["terminationGracePeriodSeconds"]


def test_only_the_images_writable_paths_are_writable() -> None:
    spec = container()
    pod = load("deployment.yaml")["spec"]["template"]["spec"]
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    image = dockerfile_env()
    mounts = {m["mountPath"] for m in spec["volumeMounts"]}
    run_parent = str(Path(image["DYNOSERVE_RUN_DIR"]).parent)
    assert mounts == {image["DYNOSERVE_MODEL_BASE_PATH"], run_parent}
    assert {v["name"] for v in pod["volumes"]} == {m["name"] for m in spec["volumeMounts"]}


def test_the_environment_is_app_jsons_and_the_bucket_comes_from_a_secret() -> None:
    spec = container()
    env = {item["name"]: item["value"] for item in spec["env"]}
    app_json = json.loads((REPO_ROOT / "app.json").read_text())["env"]
    defaults = {name: item["value"] for name, item in app_json.items() if "value" in item}
    assert {k: env[k] for k in defaults} == defaults
    assert not [name for name in env if name.startswith("BUCKETEER_")], "secrets in plain env"
    secret = spec["envFrom"][0]["secretRef"]["name"]
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"kubectl create secret generic {secret}" in readme


def test_resources_follow_the_sizing_table() -> None:
    resources = container()["resources"]
    assert resources["limits"]["memory"] == resources["requests"]["memory"] == "512Mi"
    sizing = (REPO_ROOT / "README.md").read_text().split("## Sizing", 1)[1]
    demo_row = next(line for line in sizing.splitlines() if line.startswith("| the demo model"))
    assert "Standard-1X" in demo_row  # 512 MB


def test_service_and_autoscaler_point_at_the_deployment() -> None:
    deployment = load("deployment.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = load("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == container()["ports"][0]["name"]
    target = load("hpa.yaml")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "cpu" in container()["resources"]["requests"]  # utilization needs a request
