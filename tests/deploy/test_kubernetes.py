"""k8s/: every overlay renders with Kustomize, every object passes `kubernetes-validate --strict`
(or, for KEDA's ScaledObjects, KEDA's own schema), and the rendered objects keep the promises
docs/OPERATIONS.md makes: one worker and one ScaledObject per Celery queue, GPU scheduling,
grace periods past the task time limit, Triton probes, Redis durability, network isolation."""

from __future__ import annotations

import copy
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from services.distributed.queues import QUEUES
from tests.deploy.manifests import K8S, OVERLAYS, Manifest, by_name, config_map, of_kind, pod_containers, render

# The oldest Kubernetes the manifests target (docs/OPERATIONS.md) and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


def _strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists its properties:
    what `kubectl apply --validate=strict` enforces on a CRD, and what kubernetes-validate's
    --strict does for the built-in kinds (KEDA's schema itself allows unknown fields)."""
    if isinstance(schema, dict):
        strict = {key: _strict(value) for key, value in schema.items()}
        if "properties" in strict and "additionalProperties" not in strict:
            strict["additionalProperties"] = False
        return strict
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@pytest.fixture(scope="module")
def keda_validator() -> Draft202012Validator:
    """KEDA's ScaledObject schema (keda.sh/v1alpha1), as generated from KEDA's CRD into the
    cloudcoil-models-keda package (test extra), made strict."""
    from cloudcoil.models.keda.v1alpha1 import ScaledObject

    schema = ScaledObject.model_json_schema(by_alias=True, mode="validation")
    return Draft202012Validator(_strict(schema))


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_builtin_object_passes_strict_validation(overlay: str, version: str) -> None:
    failures = []
    for manifest in render(overlay):
        if manifest["kind"] == "ScaledObject":
            continue  # a CRD: checked against KEDA's schema below
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as exc:
            failures.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {getattr(exc, 'message', exc)}")
    assert not failures, "\n".join(failures)


def test_secret_template_passes_strict_validation() -> None:
    secret = yaml.safe_load((K8S / "base" / "secret.template.yaml").read_text())
    kubernetes_validate.validate(secret, KUBERNETES_VERSIONS[-1], strict=True)
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_strict_validation_catches_a_misspelt_field() -> None:
    gateway = copy.deepcopy(by_name(render("prod"), "Deployment", "gateway"))
    gateway["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, KUBERNETES_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaled_objects_pass_kedas_schema(overlay: str, keda_validator: Draft202012Validator) -> None:
    scaled = of_kind(render(overlay), "ScaledObject")
    assert scaled
    for manifest in scaled:
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in keda_validator.iter_errors(manifest)]
        assert not errors, f"{manifest['metadata']['name']}: {errors}"


def test_kedas_schema_catches_a_misspelt_field(keda_validator: Draft202012Validator) -> None:
    scaled = copy.deepcopy(of_kind(render("prod"), "ScaledObject")[0])
    scaled["spec"]["minReplicas"] = scaled["spec"].pop("minReplicaCount")
    with pytest.raises(ValidationError):
        keda_validator.validate(scaled)


def _env(container: Manifest) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_worker_and_one_scaled_object_per_celery_queue(overlay: str) -> None:
    manifests = render(overlay)
    redis_service = by_name(manifests, "Service", "redis")
    redis_address = f"redis.{redis_service['metadata']['namespace']}.svc.cluster.local:6379"
    scaled_by_queue: dict[str, Manifest] = {}
    for scaled in of_kind(manifests, "ScaledObject"):
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["address"] == redis_address
        scaled_by_queue[trigger["metadata"]["listName"]] = scaled
    assert sorted(scaled_by_queue) == sorted(QUEUES)

    for queue, scaled in scaled_by_queue.items():
        # Tasks being worked on have left the list: at zero replicas they would have no worker.
        assert scaled["spec"]["minReplicaCount"] >= 1
        assert scaled["spec"]["maxReplicaCount"] >= scaled["spec"]["minReplicaCount"]
        target = by_name(manifests, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
        (container,) = target["spec"]["template"]["spec"]["containers"]
        assert container["args"][:3] == ["worker", "--stage", "$(FITROOM_WORKER_STAGE)"]
        assert _env(container)["FITROOM_WORKER_STAGE"] == queue
        assert target["spec"]["selector"]["matchLabels"]["fitroom.io/stage"] == queue


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_grace_period_outlasts_the_task_time_limit(overlay: str) -> None:
    manifests = render(overlay)
    settings = config_map(manifests)
    time_limit = int(settings["FITROOM_TASK_TIME_LIMIT_S"])
    assert int(settings["FITROOM_VISIBILITY_TIMEOUT_S"]) > time_limit
    workers = [d for d in of_kind(manifests, "Deployment") if d["metadata"]["name"].startswith("worker-")]
    assert len(workers) == len(QUEUES)
    for worker in workers:
        assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > time_limit


def test_prod_workers_and_triton_are_scheduled_on_gpus() -> None:
    manifests = render("prod")
    gpu_workloads = [d for d in of_kind(manifests, "Deployment") if d["metadata"]["name"] != "gateway"]
    assert len(gpu_workloads) == len(QUEUES) + 1  # the workers and Triton
    for workload in gpu_workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_dev_asks_for_no_gpu() -> None:
    rendered = yaml.safe_dump_all(render("dev"))
    assert "nvidia.com/gpu" not in rendered


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_probes_and_model_repository(overlay: str) -> None:
    triton = by_name(render(overlay), "Deployment", "triton")
    pod = triton["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "--model-repository=/models" in server["args"]
    assert {"name": "model-repository", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]
    # The repository comes from the fitroom image: same image (and tag) as the workers.
    (copier,) = pod["initContainers"]
    worker = by_name(render(overlay), "Deployment", f"worker-{QUEUES[0]}")
    assert copier["image"] == worker["spec"]["template"]["spec"]["containers"][0]["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_redis_keeps_queued_tasks(overlay: str) -> None:
    redis = by_name(render(overlay), "StatefulSet", "redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert flags["--appendonly"] == "yes"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_has_service_hpa_pdb_and_probes(overlay: str) -> None:
    manifests = render(overlay)
    gateway = by_name(manifests, "Deployment", "gateway")
    labels = gateway["spec"]["selector"]["matchLabels"]
    assert by_name(manifests, "Service", "gateway")["spec"]["selector"] == labels
    assert by_name(manifests, "PodDisruptionBudget", "gateway")["spec"]["selector"]["matchLabels"] == labels
    hpa = by_name(manifests, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"}
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def _selects(selector: Manifest, labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_is_reachable_from_outside_the_namespace(overlay: str) -> None:
    manifests = render(overlay)
    policies = of_kind(manifests, "NetworkPolicy")
    default_deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")]
    assert default_deny, "no default-deny ingress policy"
    pods = {
        w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"]
        for w in manifests
        if w["kind"] in WORKLOAD_KINDS
    }
    for name, labels in pods.items():
        for policy in policies:
            if not _selects(policy["spec"]["podSelector"], labels):
                continue
            for rule in policy["spec"].get("ingress", []):
                sources = rule.get("from")
                if sources is None:  # from anywhere
                    assert labels["app.kubernetes.io/component"] == "gateway", f"{name} open to all ({policy})"
                    continue
                for source in sources:
                    if "namespaceSelector" in source or "ipBlock" in source:
                        # The one exception: KEDA's operator reads the queue lengths from Redis.
                        assert labels["app.kubernetes.io/component"] == "redis", f"{name} open via {policy}"
                        assert source["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_as_non_root_without_escalation(overlay: str) -> None:
    namespace = by_name(render(overlay), "Namespace", "fitroom")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in render(overlay):
        if workload["kind"] not in WORKLOAD_KINDS:
            continue
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod_containers(workload):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            assert "limits" in container["resources"], f"{workload['metadata']['name']}/{container['name']}"


def test_prod_images_are_pinned() -> None:
    for workload in render("prod"):
        if workload["kind"] not in WORKLOAD_KINDS:
            continue
        for container in pod_containers(workload):
            _, _, tag = container["image"].rpartition(":")
            assert tag and tag != "latest" and any(c.isdigit() for c in tag), container["image"]
