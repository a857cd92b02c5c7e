"""The cluster definitions parse and carry what a real deployment depends on."""

import copy
import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(*parts):
    with open(os.path.join(ROOT, "cluster", *parts)) as f:
        return list(yaml.safe_load_all(f))


def _validate_launcher(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_launcher_config_passes_rays_own_validator():
    (config,) = _load("aws.yaml")
    _validate_launcher(config)
    broken = copy.deepcopy(config)
    broken["available_node_types"]["cpu_worker"]["max_workers"] = "many"
    with pytest.raises(Exception):  # noqa: B017 - the validator raises jsonschema or ValueError
        _validate_launcher(broken)


def test_every_node_type_can_reach_s3_and_setup_installs_requirements():
    (config,) = _load("aws.yaml")
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    for name, node in types.items():
        assert node["node_config"].get("IamInstanceProfile"), f"{name} has no S3 instance profile"
    setup = "\n".join(config["setup_commands"])
    assert "requirements.txt" in setup and "MLFLOW_TRACKING_URI" in setup
    with open(os.path.join(ROOT, "cluster", "aws.yaml")) as f:
        assert "AWS_SECRET_ACCESS_KEY" not in f.read()


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_reference_secrets_and_match_the_ray_version(name):
    (doc,) = _load("kuberay", name)
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    assert spec["rayVersion"] == "2.60.0"
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for g in groups:
        for c in g["template"]["spec"]["containers"]:
            assert c["image"].startswith("rayproject/ray:2.60.0-py311")
            assert {"secretRef": {"name": "sne-s3-credentials"}} in c["envFrom"]
            assert all(e["name"] != "AWS_SECRET_ACCESS_KEY" for e in c.get("env", []))
    if doc["kind"] == "RayJob":
        assert doc["spec"]["entrypoint"].startswith("python jobs/train.py")
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
