"""Kubernetes objects: manifests/ and the Helm chart rendered with default, GPU and
all-on values validate against the Kubernetes schemas (kubernetes-validate, strict) and
the KubeRay v1.7.0 CRD schemas (openAPIV3Schema of ray.io/v1, unknown fields rejected);
they follow the sample conventions (requests and limits, named ports, pinned rayVersion);
manifests/ is the chart rendered; and RayJob entrypoints and the RayService's
serveConfigV2 point at code that exists and builds."""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import importlib.util
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import annotated_types
import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from raysys.serve.config import AppArgs, AutoscalingSettings, DeploymentSettings, ServeConfig, UserConfig

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "raysys"
KUBERAY_VERSION = "v1.7.0"
#: Kubernetes version whose schemas the objects are validated against.
KUBERNETES_VERSION = "1.32.0"
#: Where the image holds the checkout (Dockerfile APP_DIR); RayJobs run scripts from it.
APP_DIR = "/home/ray/raysys"
RAY_KINDS = ("RayCluster", "RayJob", "RayService")
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"

_spec = importlib.util.spec_from_file_location("raysys_manifests_generate", ROOT / "manifests" / "generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# --------------------------------------------------------------------------- schemas


#: The pinned KubeRay CRDs, vendored unmodified (see its README.md for source and licence).
CRD_DIR = ROOT / "tests" / "schemas" / f"kuberay-crds-{KUBERAY_VERSION}"


def strict_openapi(schema: Any) -> Any:
    """Reject unknown fields like the API server prunes them: every object schema gets
    ``additionalProperties: false`` unless it sets ``x-kubernetes-preserve-unknown-fields``
    or its own ``additionalProperties`` (maps such as labels or rayStartParams)."""
    if isinstance(schema, list):
        return [strict_openapi(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict_openapi(value) for key, value in schema.items()}
    if (
        out.get("type") == "object"
        and not out.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in out
    ):
        out["additionalProperties"] = False
    return out


def _kubernetes_definitions() -> dict[str, Any]:
    import kubernetes_validate

    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    return json.loads((base / f"v{KUBERNETES_VERSION}-local-strict" / "_definitions.json").read_text())


@functools.lru_cache(maxsize=None)
def crd_validator(kind: str) -> jsonschema.protocols.Validator:
    """A validator for ``kind``'s ray.io/v1 schema; ``metadata`` is checked as a strict ObjectMeta."""
    from referencing import Registry, Resource

    path = CRD_DIR / f"ray.io_{kind.lower()}s.yaml"
    crd = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict_openapi(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    definitions = _kubernetes_definitions()
    schema["properties"]["metadata"] = {"$ref": f"{definitions['$id']}#/$defs/{OBJECT_META}"}
    schema["properties"]["apiVersion"] = {"const": "ray.io/v1"}
    schema["properties"]["kind"] = {"const": kind}
    schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``obj`` is valid (Kubernetes or KubeRay)."""
    if str(obj.get("apiVersion", "")).startswith("ray.io/"):
        errors = sorted(crd_validator(obj["kind"]).iter_errors(obj), key=lambda e: list(e.path))
        if errors:
            raise errors[0]
        return
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def describe(error: jsonschema.ValidationError) -> str:
    return f"{'/'.join(map(str, error.absolute_path))}: {error.message}"


# --------------------------------------------------------------------------- objects


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def manifest_objects() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"manifests/{path.name}#{i}", doc)
        for path in sorted((ROOT / "manifests").glob("*.yaml"))
        for i, doc in enumerate(_documents(path.read_text(encoding="utf-8")))
    ]


#: Values files the chart is rendered with in these tests.
VALUES = {
    "default": None,
    "gpu": CHART / "ci" / "gpu-values.yaml",
    "all": CHART / "ci" / "all-values.yaml",
    "auth": CHART / "ci" / "auth-values.yaml",
    "object-store": CHART / "ci" / "object-store-values.yaml",
}


@functools.lru_cache(maxsize=None)
def chart_objects(values_name: str) -> tuple[tuple[str, dict[str, Any]], ...]:
    rendered = generate.render_chart(generate.load_values(VALUES[values_name]))
    return tuple(
        (f"chart[{values_name}]:{path}#{i}", doc)
        for path, text in rendered.items()
        for i, doc in enumerate(_documents(text))
    )


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    objects = manifest_objects()
    for name in VALUES:
        objects += list(chart_objects(name))
    return objects


def _by_kind(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(where, obj) for where, obj in all_objects() if obj["kind"] == kind]


def ray_cluster_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]
    return [s for s in (spec if obj["kind"] == "RayCluster" else spec.get("rayClusterSpec") or spec.get("rayClusterConfig"),) if s]


def pod_specs(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec in an object (Deployment, Pod, Ray head/worker/submitter templates)."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind == "Pod":
        yield "pod", spec
    elif kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        yield "template", spec["template"]["spec"]
    if kind == "RayJob" and spec.get("submitterPodTemplate"):
        yield "submitter", spec["submitterPodTemplate"]["spec"]
    for cluster in ray_cluster_specs(obj) if kind in RAY_KINDS else []:
        yield "head", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"worker:{group['groupName']}", group["template"]["spec"]


def containers(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, pod in pod_specs(obj):
        for container in pod.get("initContainers", []) + pod["containers"]:
            yield f"{where}/{container['name']}", container
    for cluster in ray_cluster_specs(obj) if obj["kind"] in RAY_KINDS else []:
        if cluster.get("enableInTreeAutoscaling"):
            yield "autoscaler", {"name": "autoscaler", **cluster.get("autoscalerOptions", {})}


OBJECTS = all_objects()
IDS = [where for where, _ in OBJECTS]


# --------------------------------------------------------------------------- schema tests


def test_manifests_folder_has_every_object_the_issue_asks_for():
    kinds = {(obj["kind"], obj["metadata"]["name"]) for _, obj in manifest_objects()}
    expected = {
        ("Namespace", "raysys"),
        ("ServiceAccount", "raysys-ray"),
        ("ServiceAccount", "raysys-mlflow"),
        ("ServiceAccount", "raysys-submitter"),
        ("Role", "raysys-submitter"),
        ("RoleBinding", "raysys-submitter"),
        ("PersistentVolumeClaim", "raysys-shared"),
        ("PersistentVolumeClaim", "mlflow"),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("ConfigMap", "mlflow-auth"),
        ("NetworkPolicy", "raysys-ray"),
        ("NetworkPolicy", "raysys-mlflow"),
        ("RayCluster", "raysys"),
        ("RayJob", "raysys-train"),
        ("RayJob", "raysys-sweep"),
        ("RayJob", "raysys-fleet"),
        ("RayService", "raysys-detector"),
    }
    assert kinds == expected


@pytest.mark.parametrize(("where", "obj"), OBJECTS, ids=IDS)
def test_object_validates_against_kubernetes_and_kuberay_schemas(where, obj):
    try:
        validate(obj)
    except jsonschema.ValidationError as error:
        pytest.fail(f"{where} ({obj['kind']} {obj['metadata'].get('name')}): {describe(error)}")


def _set(obj: dict[str, Any], path: list[Any], key: str, value: Any) -> dict[str, Any]:
    broken = copy.deepcopy(obj)
    node = broken
    for step in path:
        node = node[step]
    node[key] = value
    return broken


def _rename(obj: dict[str, Any], path: list[Any], old: str, new: str) -> dict[str, Any]:
    broken = copy.deepcopy(obj)
    node = broken
    for step in path:
        node = node[step]
    node[new] = node.pop(old)
    return broken


def _manifest(kind: str, name: str) -> dict[str, Any]:
    return next(obj for _, obj in manifest_objects() if obj["kind"] == kind and obj["metadata"]["name"] == name)


MISSPELT = {
    "raycluster-worker-maxReplica": lambda: _rename(
        _manifest("RayCluster", "raysys"), ["spec", "workerGroupSpecs", 0], "maxReplicas", "maxReplica"
    ),
    "raycluster-autoscaling-typo": lambda: _rename(
        _manifest("RayCluster", "raysys"), ["spec"], "enableInTreeAutoscaling", "enableInTreeAutoScaling"
    ),
    "raycluster-container-resource": lambda: _rename(
        _manifest("RayCluster", "raysys"),
        ["spec", "headGroupSpec", "template", "spec", "containers", 0],
        "resources",
        "resource",
    ),
    "raycluster-metadata-lables": lambda: _rename(_manifest("RayCluster", "raysys"), ["metadata"], "labels", "lables"),
    "rayjob-entryPoint": lambda: _rename(_manifest("RayJob", "raysys-train"), ["spec"], "entrypoint", "entryPoint"),
    "rayjob-nested-rayStartParam": lambda: _rename(
        _manifest("RayJob", "raysys-sweep"), ["spec", "rayClusterSpec", "headGroupSpec"], "rayStartParams", "rayStartParam"
    ),
    "rayservice-serveConfig": lambda: _rename(
        _manifest("RayService", "raysys-detector"), ["spec"], "serveConfigV2", "serveConfig"
    ),
    "rayservice-bad-upscalingMode": lambda: _set(
        _manifest("RayService", "raysys-detector"), ["spec", "rayClusterConfig", "autoscalerOptions"], "upscalingMode", "Fast"
    ),
    "raycluster-bad-quantity": lambda: _set(
        _manifest("RayCluster", "raysys"),
        ["spec", "headGroupSpec", "template", "spec", "containers", 0, "resources", "limits"],
        "memory",
        "8 GB",
    ),
    "deployment-replica": lambda: _rename(_manifest("Deployment", "mlflow"), ["spec"], "replicas", "replica"),
    "deployment-container-imagePullPolicy": lambda: _rename(
        _manifest("Deployment", "mlflow"),
        ["spec", "template", "spec", "containers", 0],
        "imagePullPolicy",
        "imagePulPolicy",
    ),
    "service-port-targetport": lambda: _rename(_manifest("Service", "mlflow"), ["spec", "ports", 0], "targetPort", "targetport"),
    "role-verb-list": lambda: _rename(_manifest("Role", "raysys-submitter"), ["rules", 0], "verbs", "verb"),
}


@pytest.mark.parametrize("case", sorted(MISSPELT))
def test_misspelt_field_fails_validation(case):
    broken = MISSPELT[case]()
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)


def test_strict_openapi_keeps_maps_and_preserved_fields_open():
    schema = strict_openapi(
        {
            "type": "object",
            "properties": {
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        }
    )
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"labels": {"a": "b"}, "free": {"anything": [1]}})
    assert not validator.is_valid({"lables": {}})


# --------------------------------------------------------------------------- chart tests


def test_manifests_are_the_chart_rendered_with_all_values():
    """manifests/ == `python manifests/generate.py` output: the two never drift apart."""
    expected = generate.expected_manifests()
    present = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "manifests").glob("*.yaml")}
    assert sorted(present) == sorted(expected)
    stale = [name for name in expected if present[name] != expected[name]]
    assert not stale, f"{stale} are out of date: run python manifests/generate.py"


def test_chart_defaults_render_mlflow_and_a_raycluster_only():
    kinds = sorted(obj["kind"] for _, obj in chart_objects("default") if "test-connection" not in obj["metadata"]["name"])
    assert "RayCluster" in kinds and "Deployment" in kinds
    assert "RayJob" not in kinds and "RayService" not in kinds and "Namespace" not in kinds


def test_chart_gpu_values_ask_for_gpus_everywhere():
    objects = dict((obj["kind"] + "/" + obj["metadata"]["name"], obj) for _, obj in chart_objects("gpu"))
    for name in ("RayCluster/raysys", "RayJob/raysys-train", "RayJob/raysys-sweep", "RayService/raysys-detector"):
        (cluster,) = ray_cluster_specs(objects[name])
        gpu = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
        assert gpu["minReplicas"] >= 1
        (container,) = gpu["template"]["spec"]["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert container["image"].endswith("-gpu")
        assert gpu["template"]["spec"]["tolerations"] and gpu["template"]["spec"]["nodeSelector"]
    assert "--gpu" in shlex.split(objects["RayJob/raysys-train"]["spec"]["entrypoint"])
    sweep = shlex.split(objects["RayJob/raysys-sweep"]["spec"]["entrypoint"])
    assert float(sweep[sweep.index("--gpus-per-worker") + 1]) > 0
    serve = yaml.safe_load(objects["RayService/raysys-detector"]["spec"]["serveConfigV2"])
    assert serve["applications"][0]["deployments"][0]["ray_actor_options"]["num_gpus"] > 0


@pytest.mark.parametrize(("ingress", "throughput", "retry_on"),
                         [(None, None, None), ("haproxy", False, "conn-failure"), ("proxy", True, None)])
def test_rayservice_pods_start_serve_with_the_chosen_settings(ingress, throughput, retry_on):
    """``rayService.ingress``, ``.throughputOptimized`` and ``.retryOn`` reach every Ray container of the
    RayService as the env that ``raysys.serve.config.serve_env`` sets locally (defaults: ServeConfig's);
    no other Ray cluster gets it."""
    from raysys.serve.config import serve_env

    values = generate.load_values(VALUES["all"])
    if ingress:
        values["rayService"].update(ingress=ingress, throughputOptimized=throughput)
    if retry_on:
        values["rayService"]["retryOn"] = retry_on
    defaults = ServeConfig()
    expected = serve_env(ingress or defaults.ingress, defaults.throughput_optimized if throughput is None else throughput,
                         retry_on or defaults.retry_on)
    for _, text in generate.render_chart(values).items():
        for obj in _documents(text):
            for where, container in containers(obj) if obj["kind"] in RAY_KINDS else []:
                if where == "autoscaler" or where.startswith("submitter"):
                    continue
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                got = {k: env.get(k) for k in expected}
                assert got == (expected if obj["kind"] == "RayService" else dict.fromkeys(expected)), \
                    f"{obj['kind']} {where}: {env}"


def test_a_fleet_rayservice_configures_the_fleet_scorer_and_passes_rays_schema():
    """``rayService.fleet`` serves a registered fleet: the deployment options go to ``FleetScorer`` (the name
    raysys.fleet.serve gives it), ``max_models_per_replica`` to app_builder; Ray's ServeDeploySchema accepts it."""
    from ray.serve.schema import ServeDeploySchema

    from raysys.fleet.serve import SCORER_NAME

    values = generate.load_values(VALUES["all"])
    values["rayService"].update(fleet=True, modelUri="models:/raysys-fleet@champion", maxModelsPerReplica=32)
    service = next(o for o in _render(values) if o["kind"] == "RayService")
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    app = config["applications"][0]
    assert app["deployments"][0]["name"] == SCORER_NAME
    assert AppArgs.model_validate(app["args"]).max_models_per_replica == 32


def test_chart_auth_values_use_the_existing_token_secret():
    for _, obj in chart_objects("auth"):
        for cluster in ray_cluster_specs(obj) if obj["kind"] in RAY_KINDS else []:
            assert cluster["authOptions"] == {"mode": "token", "secretName": "raysys-ray-token"}


def test_chart_lints_clean():
    import helm_python

    for name, values in VALUES.items():
        report = helm_python.lint(str(CHART), generate.load_values(values), strict=True, namespace="raysys")
        errors = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
        assert not errors, f"helm lint ({name}): {errors}"


@pytest.mark.parametrize(
    "values",
    [
        {"workers": {"cpu": {"maxReplica": 3}}},
        {"rayJobs": {"train": {"modle": "ae"}}},
        {"rayJobs": {"train": {"model": "nonsense"}}},
        {"autoscaler": {"upscalingMode": "Fast"}},
        {"mlflow": {"backendStore": {"url": "postgresql://x"}}},
        {"rayService": {"ingress": "nginx"}},
        {"rayService": {"retryOn": " "}},
        {"objectStore": {"env": {"AWS_SECRET_ACCESS_KEY": "x"}}},
        {"rayJobs": {"train": {"data": "http://example.com/data"}}},
    ],
    ids=["maxReplica", "modle", "bad-model", "bad-upscalingMode", "backendStore-url", "bad-ingress", "blank-retryOn",
         "secret-in-objectStore-env", "bad-data-uri"],
)
def test_chart_rejects_misspelt_or_invalid_values(values):
    """values.schema.json: a typo in -f/--set values fails the install instead of being ignored."""
    import helm_python

    with pytest.raises(helm_python.HelmValuesError):
        generate.render_chart(values)


def test_values_yaml_documents_every_key():
    """Every key in values.yaml has a comment on the line(s) above it."""
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match or line.lstrip().startswith("- "):
            continue
        previous = lines[i - 1].strip() if i else ""
        if not previous.startswith("#") and "#" not in line:
            undocumented.append(f"{i + 1}: {line.strip()}")
    # Keys inside list items (e.g. a toleration's key/operator/effect) are data, not settings.
    undocumented = [u for u in undocumented if not re.search(r": (operator|effect):", u)]
    assert not undocumented, "values.yaml keys without a comment:\n" + "\n".join(undocumented)


# --------------------------------------------------------------------------- conventions


@pytest.mark.parametrize(("where", "obj"), OBJECTS, ids=IDS)
def test_every_container_has_requests_and_limits(where, obj):
    for name, container in containers(obj):
        resources = container.get("resources", {})
        for section in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(section, {}))
            assert not missing, f"{where} {name}: resources.{section} lacks {missing}"


@pytest.mark.parametrize(("where", "obj"), OBJECTS, ids=IDS)
def test_every_port_is_named(where, obj):
    for name, container in containers(obj):
        for port in container.get("ports", []):
            assert port.get("name"), f"{where} {name}: port {port['containerPort']} has no name"
    if obj["kind"] == "Service":
        assert all(port.get("name") for port in obj["spec"]["ports"])


@pytest.mark.parametrize(("where", "obj"), OBJECTS, ids=IDS)
def test_pods_run_as_non_root(where, obj):
    for name, pod in pod_specs(obj):
        assert pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{where} {name}"
    for name, container in containers(obj):
        assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False, f"{where} {name}"


RAY_OBJECTS = [(where, obj) for where, obj in OBJECTS if obj["kind"] in RAY_KINDS]


@pytest.mark.parametrize(("where", "obj"), RAY_OBJECTS, ids=[where for where, _ in RAY_OBJECTS])
def test_ray_version_is_pinned_and_equals_every_image_tag(where, obj):
    for cluster in ray_cluster_specs(obj):
        version = cluster["rayVersion"]
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{where}: rayVersion {version!r} is not pinned"
        for name, container in containers(obj):
            if "image" in container:
                tag = container["image"].rsplit(":", 1)[1]
                assert tag.split("-")[0] == version, f"{where} {name}: image {container['image']} vs rayVersion {version}"


@pytest.mark.parametrize(("where", "obj"), RAY_OBJECTS, ids=[where for where, _ in RAY_OBJECTS])
def test_ray_clusters_autoscale_cpu_and_gpu_groups(where, obj):
    (cluster,) = ray_cluster_specs(obj)
    assert cluster["enableInTreeAutoscaling"] is True
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu_container = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] >= 1
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["serviceAccountName"].endswith("-ray")
    for group in groups.values():
        assert group["template"]["spec"]["automountServiceAccountToken"] is False


def test_rbac_is_namespaced_and_least_privilege():
    roles = [obj for _, obj in OBJECTS if obj["kind"] in {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}]
    assert roles and all(obj["kind"] in {"Role", "RoleBinding"} for obj in roles)
    for role in (obj for obj in roles if obj["kind"] == "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert not {"secrets", "roles", "rolebindings"} & set(rule["resources"])
            if rule["resources"] != ["rayjobs"]:
                assert not {"update", "patch", "delete", "deletecollection"} & set(rule["verbs"]), rule


# --------------------------------------------------------------------------- security defaults

#: Every object the chart can create, with the chart's generated Secrets (no existingSecret).
EVERYTHING_ON = {"namespace": {"create": True}, "rayJobs": {"train": {"enabled": True}, "sweep": {"enabled": True}},
                 "rayService": {"enabled": True}}
#: Writable emptyDirs (values.yaml securityContext): mount path -> the pods that need it.
RAY_SCRATCH = {"/tmp", "/tmp/ray", "/home/ray/.cache", "/dev/shm"}
SERVE_SCRATCH = RAY_SCRATCH | {"/tmp/haproxy-serve"}
SUBMITTER_SCRATCH = {"/tmp", "/home/ray/.cache"}
MLFLOW_SCRATCH = {"/tmp", "/home/ray/.cache", "/mlflow"}
#: The client label documented in values.yaml (networkPolicy.clientPodLabels).
CLIENT_LABELS = {"raysys.io/client": "true"}
#: Volume types Pod Security "restricted" allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def _render(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [obj for text in generate.render_chart(values).values() for obj in _documents(text)]


def _merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = _merged(out.get(key, {}), value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@functools.lru_cache(maxsize=None)
def _everything_on() -> tuple[dict[str, Any], ...]:
    return tuple(_render(EVERYTHING_ON))


def _one(objects, kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes LabelSelector (matchLabels, matchExpressions In/NotIn/Exists) matches labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
    return True


def _pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template {metadata, spec}) of every pod an object makes."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind == "Pod":
        yield "pod", obj
    elif kind == "Deployment":
        yield "template", spec["template"]
    if kind == "RayJob":
        yield "submitter", spec["submitterPodTemplate"]
    for cluster in ray_cluster_specs(obj) if kind in RAY_KINDS else []:
        yield "head", cluster["headGroupSpec"]["template"]
        for group in cluster["workerGroupSpecs"]:
            yield f"worker:{group['groupName']}", group["template"]


def _ray_containers(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The Ray containers (head and workers, not the autoscaler or submitter) of a Ray object."""
    for where, container in containers(obj):
        if where.startswith(("head/", "worker:")):
            yield where, container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_default_render_turns_on_ray_token_auth_with_a_generated_secret():
    """rayAuth is on by default: the chart makes <fullname>-ray-token (a random auth_token) and every Ray
    cluster's authOptions names it, so KubeRay gives each Ray container and RayJob submitter the token."""
    import base64

    objects = _everything_on()
    secret = _one(objects, "Secret", "raysys-ray-token")
    token = base64.b64decode(secret["data"]["auth_token"]).decode()
    assert len(token) >= 32 and token.isalnum()
    clusters = [c for obj in objects if obj["kind"] in RAY_KINDS for c in ray_cluster_specs(obj)]
    assert len(clusters) == 4
    for cluster in clusters:
        assert cluster["authOptions"] == {"mode": "token", "secretName": "raysys-ray-token"}
    # helm test sends the token to the dashboard.
    test_pod = _one(objects, "Pod", "raysys-test-connection")
    (check,) = test_pod["spec"]["containers"]
    assert _env(check)["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "raysys-ray-token", "key": "auth_token"}
    # Two renders (two installs) get different tokens: nothing is baked into the chart.
    again = _one(_render(EVERYTHING_ON), "Secret", "raysys-ray-token")
    assert again["data"]["auth_token"] != secret["data"]["auth_token"]


def test_existing_secrets_are_used_instead_of_generated_ones():
    objects = _render(_merged(EVERYTHING_ON, {"rayAuth": {"existingSecret": "my-token"},
                                              "mlflow": {"auth": {"existingSecret": "my-mlflow"}}}))
    assert not [o for o in objects if o["kind"] == "Secret"]
    for obj in objects:
        for cluster in ray_cluster_specs(obj) if obj["kind"] in RAY_KINDS else []:
            assert cluster["authOptions"]["secretName"] == "my-token"
        for where, container in _ray_containers(obj) if obj["kind"] in RAY_KINDS else []:
            assert _env(container)["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "my-mlflow", where
    mlflow = _one(objects, "Deployment", "mlflow")
    env = _env(mlflow["spec"]["template"]["spec"]["containers"][0])
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "my-mlflow"


def test_removed_rayauth_secretname_fails_with_a_pointer():
    import helm_python

    with pytest.raises(helm_python.HelmError, match="rayAuth.existingSecret"):
        generate.render_chart({"rayAuth": {"secretName": "raysys-ray-token"}})


def test_network_policies_admit_only_the_release_clients_and_ray_itself():
    objects = _everything_on()
    ray_policy = _one(objects, "NetworkPolicy", "raysys-ray")["spec"]
    mlflow_policy = _one(objects, "NetworkPolicy", "raysys-mlflow")["spec"]
    assert ray_policy["policyTypes"] == ["Ingress"] and mlflow_policy["policyTypes"] == ["Ingress"]
    pods = [(f"{o['kind']}/{o['metadata']['name']}/{where}", t["metadata"]["labels"])
            for o in objects for where, t in _pod_templates(o)]
    ray_pods = [(w, labels) for w, labels in pods if w.split("/")[-1].startswith(("head", "worker:"))]
    assert len(ray_pods) == 12
    # The Ray policy selects exactly the Ray pods; the MLflow policy exactly the MLflow pod.
    assert [w for w, labels in pods if _selects(ray_policy["podSelector"], labels)] == [w for w, _ in ray_pods]
    assert [w for w, labels in pods if _selects(mlflow_policy["podSelector"], labels)] == ["Deployment/mlflow/template"]
    # Ray pods reach each other on every port.
    (intra,) = [r for r in ray_policy["ingress"] if r.get("from") == [{"podSelector": ray_policy["podSelector"]}]]
    assert "ports" not in intra
    # Dashboard / Job API, GCS and Ray Client: from the release's pods and client-labelled pods only.
    (head_rule,) = [r for r in ray_policy["ingress"] if {p["port"] for p in r.get("ports", [])} == {8265, 6379, 10001}]
    (mlflow_rule,) = mlflow_policy["ingress"]
    assert [p["port"] for p in mlflow_rule["ports"]] == [5000]
    for rule in (head_rule, mlflow_rule):
        peers = rule["from"]
        assert all(set(peer) == {"podSelector"} for peer in peers), "same-namespace pods only"
        admitted = [w for w, labels in pods if any(_selects(p["podSelector"], labels) for p in peers)]
        assert admitted == [w for w, _ in pods]  # every pod of the release (submitters, helm test, MLflow...)
        assert any(_selects(p["podSelector"], CLIENT_LABELS) for p in peers)
        assert not any(_selects(p["podSelector"], {"app": "anything-else"}) for p in peers)
    # Serve's port stays open (the RayService's Service), as does metrics; the operator reaches everything.
    (serve_rule,) = [r for r in ray_policy["ingress"] if [p["port"] for p in r.get("ports", [])] == [8000]]
    assert "from" not in serve_rule
    operator = [r for r in ray_policy["ingress"] if "ports" not in r and r is not intra]
    assert operator == [{"from": [{"namespaceSelector": {},
                                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}}]}]


def test_network_policy_peers_are_configurable():
    peer = {"namespaceSelector": {"matchLabels": {"team": "ml"}}}
    objects = _render({"networkPolicy": {"servePeers": [peer], "extraClientPeers": [peer],
                                         "clientPodLabels": {"ci": "yes"}}})
    spec = _one(objects, "NetworkPolicy", "raysys-ray")["spec"]
    (serve_rule,) = [r for r in spec["ingress"] if [p["port"] for p in r.get("ports", [])] == [8000]]
    assert serve_rule["from"] == [peer]
    (head_rule,) = [r for r in spec["ingress"] if 8265 in {p["port"] for p in r.get("ports", [])}]
    # Helm merges maps: the documented label stays unless set to null.
    assert peer in head_rule["from"]
    assert {"podSelector": {"matchLabels": {"ci": "yes", "raysys.io/client": "true"}}} in head_rule["from"]
    for obj in objects:
        validate(obj)


@pytest.mark.parametrize(("where", "obj"), OBJECTS, ids=IDS)
def test_every_container_has_a_read_only_root_filesystem(where, obj):
    for name, container in containers(obj):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, f"{where} {name}"


@pytest.mark.parametrize("values_name", sorted(VALUES))
def test_writable_paths_are_emptydirs_mounted_where_listed(values_name):
    """Each container mounts an emptyDir (or its volume) at the paths values.yaml lists for it."""
    for where, obj in chart_objects(values_name):
        for pod_where, template in _pod_templates(obj):
            spec = template["spec"]
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            serve = obj["kind"] == "RayService"
            wanted = {"head": SERVE_SCRATCH if serve else RAY_SCRATCH, "submitter": SUBMITTER_SCRATCH,
                      "template": MLFLOW_SCRATCH, "pod": set()}.get(pod_where, SERVE_SCRATCH if serve else RAY_SCRATCH)
            (container, *_) = spec["containers"]
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert wanted <= set(mounts), f"{where} {pod_where}: {sorted(wanted - set(mounts))} not mounted"
            for path in wanted - {"/mlflow"}:
                assert "emptyDir" in volumes[mounts[path]], f"{where} {pod_where}: {path} is not an emptyDir"
            if "MPLCONFIGDIR" in _env(container):
                assert _env(container)["MPLCONFIGDIR"]["value"].startswith("/home/ray/.cache/")
        for cluster in ray_cluster_specs(obj) if obj["kind"] in RAY_KINDS else []:
            # The autoscaler sidecar mounts the head pod's /tmp and ~/.cache; KubeRay adds "ray-logs" at /tmp/ray,
            # the head's own volume of that name.
            head_volumes = {v["name"] for v in cluster["headGroupSpec"]["template"]["spec"]["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in cluster["autoscalerOptions"]["volumeMounts"]}
            assert set(mounts) == {"/tmp", "/home/ray/.cache"} and set(mounts.values()) <= head_volumes
            assert "ray-logs" in head_volumes


def test_service_account_tokens_are_mounted_only_where_the_api_is_used():
    objects = _everything_on()
    for obj in objects:
        for where, template in _pod_templates(obj):
            automount = template["spec"].get("automountServiceAccountToken")
            # Only the head, for the autoscaler sidecar (autoscaler.enabled, on by default).
            assert automount is (where == "head"), f"{obj['kind']} {obj['metadata']['name']} {where}"
    for obj in _render(_merged(EVERYTHING_ON, {"autoscaler": {"enabled": False}})):
        for where, template in _pod_templates(obj):
            assert template["spec"]["automountServiceAccountToken"] is False, f"{obj['kind']} {where}"
    assert _one(objects, "ServiceAccount", "raysys-mlflow")["automountServiceAccountToken"] is False


def test_namespace_enforces_pod_security_restricted():
    namespace = _manifest("Namespace", "raysys")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (chart_namespace,) = [o for o in _everything_on() if o["kind"] == "Namespace"]
    assert chart_namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _restricted_violations(pod: dict[str, Any], extra_containers: list[dict[str, Any]]) -> list[str]:
    """The Pod Security "restricted" profile's checks (Kubernetes 1.32) that a pod spec fails."""
    problems = []
    pod_context = pod.get("securityContext", {})
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(key)
    for volume in pod.get("volumes", []):
        if not set(volume) - {"name"} <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}")
    for container in pod.get("initContainers", []) + pod["containers"] + extra_containers:
        context = container.get("securityContext", {})
        name = container["name"]
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation")
        if "ALL" not in context.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: capabilities.drop ALL")
        if set(context.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities.add")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: runAsNonRoot")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {}))
        if seccomp.get("type") not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{name}: seccompProfile")
    return problems


@pytest.mark.parametrize(("where", "obj"), OBJECTS, ids=IDS)
def test_pods_meet_pod_security_restricted(where, obj):
    for name, pod in pod_specs(obj):
        # The autoscaler sidecar joins the head pod with autoscalerOptions.securityContext.
        sidecars = [{"name": "autoscaler", **c.get("autoscalerOptions", {})}
                    for c in (ray_cluster_specs(obj) if obj["kind"] in RAY_KINDS else [])
                    if name == "head" and c.get("enableInTreeAutoscaling")]
        assert not _restricted_violations(pod, sidecars), f"{where} {name}"


def test_image_digests_pin_every_container():
    cpu, gpu = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    objects = _render(_merged(EVERYTHING_ON, {"image": {"repository": "ghcr.io/acme/raysys", "digest": cpu,
                                                        "gpuDigest": gpu}}))
    images = {container["image"] for obj in objects for _, container in containers(obj) if "image" in container}
    assert images == {f"ghcr.io/acme/raysys@{cpu}", f"ghcr.io/acme/raysys@{gpu}"}
    for obj in objects:
        for cluster in ray_cluster_specs(obj) if obj["kind"] in RAY_KINDS else []:
            gpu_group = next(g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu")
            assert gpu_group["template"]["spec"]["containers"][0]["image"].endswith(gpu)
        validate(obj)
    # Without a digest, tags as before.
    assert all("@" not in c["image"] for obj in _everything_on() for _, c in containers(obj) if "image" in c)


@pytest.mark.parametrize("digest", ["sha256:abc", "a" * 64, "latest"])
def test_chart_rejects_a_malformed_digest(digest):
    import helm_python

    with pytest.raises(helm_python.HelmValuesError):
        generate.render_chart({"image": {"digest": digest}})


def test_rayservice_pods_outlast_serves_drain():
    """terminationGracePeriodSeconds of the Serve pods exceeds HAProxy's draining period plus the replicas'
    graceful_shutdown_timeout_s (raysys's default); the schema refuses anything not above that sum."""
    import helm_python
    from ray.serve._private import constants

    drain = constants.RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S + DeploymentSettings().graceful_shutdown_timeout_s
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["properties"]["rayService"]["properties"]["terminationGracePeriodSeconds"]["exclusiveMinimum"] == drain
    for obj in _everything_on():
        for where, template in _pod_templates(obj):
            grace = template["spec"].get("terminationGracePeriodSeconds")
            if obj["kind"] == "RayService":
                assert grace == 90 > drain, where
            else:
                assert grace is None, f"{obj['kind']} {where}"
    with pytest.raises(helm_python.HelmValuesError):
        generate.render_chart({"rayService": {"terminationGracePeriodSeconds": int(drain)}})


def _mlflow_auth_module(name: str):
    """mlflow.server.auth.<name> without the package's __init__ (which needs Flask-WTF, a server-only extra)."""
    import mlflow

    path = Path(mlflow.__file__).parent / "server" / "auth" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"raysys_mlflow_auth_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlflow_runs_basic_auth_and_every_ray_container_gets_the_credentials(tmp_path, monkeypatch):
    import configparser

    read_auth_config = _mlflow_auth_module("config").read_auth_config

    objects = _everything_on()
    deployment = _one(objects, "Deployment", "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert "--app-name=basic-auth" in server["args"]
    env = _env(server)
    for name, key in [("MLFLOW_AUTH_ADMIN_USERNAME", "username"), ("MLFLOW_AUTH_ADMIN_PASSWORD", "password"),
                      ("MLFLOW_FLASK_SERVER_SECRET_KEY", "flask-secret-key")]:
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "raysys-mlflow-auth", "key": key}
    secret = _one(objects, "Secret", "raysys-mlflow-auth")
    assert set(secret["data"]) == {"username", "password", "flask-secret-key"}
    # basic_auth.ini is MLflow's format, on the mounted path, with its user database on MLflow's volume.
    ini = _one(objects, "ConfigMap", "mlflow-auth")["data"]["basic_auth.ini"]
    mounted = {m["mountPath"] for m in server["volumeMounts"]}
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"].rsplit("/", 1)[0] in mounted
    (tmp_path / "basic_auth.ini").write_text(ini)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(tmp_path / "basic_auth.ini"))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "x" * 20)
    config = read_auth_config()
    assert config.default_permission in {"READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS"}
    assert config.database_uri == "sqlite:////mlflow/basic_auth.db"
    configparser.ConfigParser().read_string(ini)
    # Every Ray container (and so every driver, Train worker and Serve replica) gets the credentials;
    # the RayJobs' runtime_env carries none.
    count = 0
    for obj in objects:
        if obj["kind"] not in RAY_KINDS:
            continue
        for where, container in _ray_containers(obj):
            count += 1
            env = _env(container)
            assert env["MLFLOW_TRACKING_USERNAME"]["valueFrom"]["secretKeyRef"] == {"name": "raysys-mlflow-auth", "key": "username"}
            assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "raysys-mlflow-auth", "key": "password"}
        if obj["kind"] == "RayJob":
            assert "MLFLOW_TRACKING_PASSWORD" not in obj["spec"]["runtimeEnvYAML"]
    assert count == 12


def test_object_store_credentials_reach_every_ray_container_from_secrets_only():
    """ci/object-store-values.yaml: the train RayJob reads s3:// (no data generated), and every Ray container of
    every Ray object gets the S3 Secret as envFrom, the endpoint as plain env and the GCS key as a read-only file;
    no secret value is in the rendered objects (there is none in the values)."""
    objects = [obj for _, obj in chart_objects("object-store")]
    job = _one(objects, "RayJob", "raysys-train")
    commands = _commands(job["spec"]["entrypoint"])
    assert len(commands) == 1 and commands[0][1].endswith("jobs/train.py")
    words = commands[0]
    assert words[words.index("--data") + 1] == "s3://plant-history/line-3"
    assert words[words.index("--ingest") + 1] == "stream"
    count = 0
    for obj in objects:
        for where, container in _ray_containers(obj) if obj["kind"] in RAY_KINDS else []:
            count += 1
            assert container["envFrom"] == [{"secretRef": {"name": "raysys-s3"}}], where
            env = _env(container)
            assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
            assert env["GOOGLE_APPLICATION_CREDENTIALS"]["value"] == "/var/run/secrets/raysys/gcs/key.json"
            mount = next(m for m in container["volumeMounts"] if m["name"] == "gcs-key")
            assert mount["readOnly"] and env["GOOGLE_APPLICATION_CREDENTIALS"]["value"].startswith(mount["mountPath"])
    assert count > 0
    for where, pod in (p for obj in objects for p in pod_specs(obj) if obj["kind"] in RAY_KINDS):
        if where.startswith(("head", "worker")):
            assert {"name": "gcs-key", "secret": {"secretName": "raysys-gcs",
                                                  "items": [{"key": "key.json", "path": "key.json"}]}} in pod["volumes"]
    # the default render has none of it
    for obj in (o for _, o in chart_objects("default")):
        for where, container in _ray_containers(obj) if obj["kind"] in RAY_KINDS else []:
            assert "envFrom" not in container and "GOOGLE_APPLICATION_CREDENTIALS" not in _env(container)


def test_the_image_has_what_mlflows_basic_auth_app_imports():
    """`mlflow server --app-name basic-auth` (mlflow.auth.enabled, the default) imports Flask-WTF, which
    plain `mlflow` does not install: the image must add it (mlflow[auth] or Flask-WTF)."""
    import importlib.metadata

    requires = importlib.metadata.requires("raysys") or []
    assert any(r.replace(" ", "").startswith("mlflow[auth]") for r in requires), requires
    # the image installs raysys itself (`pip install .`), so it gets what this environment got
    assert "pip install ." in (ROOT / "Dockerfile").read_text(encoding="utf-8")
    import mlflow.server.auth  # noqa: F401  imports Flask-WTF; fails if the extra did not install it


#: Each guard's switch -> a check that the guard is gone from the render.
GUARDS_OFF = {
    "rayAuth": ({"rayAuth": {"enabled": False}},
                lambda objs: not [o for o in objs if o["kind"] == "Secret" and "ray-token" in o["metadata"]["name"]]
                and all("authOptions" not in c for o in objs if o["kind"] in RAY_KINDS for c in ray_cluster_specs(o))),
    "networkPolicy": ({"networkPolicy": {"enabled": False}},
                      lambda objs: not [o for o in objs if o["kind"] == "NetworkPolicy"]),
    "mlflow.auth": ({"mlflow": {"auth": {"enabled": False}}},
                    lambda objs: not [o for o in objs if o["kind"] in {"Secret", "ConfigMap"} and "mlflow" in o["metadata"]["name"]]
                    and "--app-name=basic-auth" not in _one(objs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]["args"]
                    and all("MLFLOW_TRACKING_PASSWORD" not in _env(c) for o in objs if o["kind"] in RAY_KINDS
                            for _, c in _ray_containers(o))),
    "readOnlyRootFilesystem": ({"securityContext": {"readOnlyRootFilesystem": False}},
                               lambda objs: all(c["securityContext"]["readOnlyRootFilesystem"] is False
                                                for o in objs for _, c in containers(o))),
    "podSecurity": ({"namespace": {"podSecurityEnforce": "baseline"}},
                    lambda objs: _one(objs, "Namespace", "raysys")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"),
}


@pytest.mark.parametrize("guard", sorted(GUARDS_OFF))
def test_each_guard_has_a_switch_that_turns_it_off(guard):
    values, is_off = GUARDS_OFF[guard]
    assert not is_off(list(_everything_on())), f"{guard} is not on by default"
    objects = _render(_merged(EVERYTHING_ON, values))
    assert is_off(objects)
    for obj in objects:
        try:
            validate(obj)
        except jsonschema.ValidationError as error:
            pytest.fail(f"{guard} off: {obj['kind']} {obj['metadata']['name']}: {describe(error)}")


# --------------------------------------------------------------------------- entrypoints


class _Parsed(Exception):
    """Raised instead of running a command once its arguments parsed."""

    def __init__(self, namespace: argparse.Namespace):
        super().__init__(namespace)
        self.namespace = namespace


@pytest.fixture()
def parse_only(monkeypatch):
    """Make argparse stop right after a successful parse: run a CLI without running the command."""
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        raise _Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)


def _job_script(path: str):
    """Import jobs/<name>.py from the repository given its path inside the image."""
    assert path.startswith(f"{APP_DIR}/jobs/"), f"{path} is not a script from jobs/ in the image"
    local = ROOT / path[len(APP_DIR) + 1 :]
    assert local.is_file(), f"{path} does not exist in the repository ({local})"
    spec = importlib.util.spec_from_file_location(f"raysys_job_{local.stem}", local)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.COMMAND == local.stem
    return module


def _commands(entrypoint: str) -> list[list[str]]:
    return [shlex.split(part) for part in entrypoint.split("&&")]


RAYJOBS = _by_kind("RayJob")


@pytest.mark.parametrize(("where", "obj"), RAYJOBS, ids=[w for w, _ in RAYJOBS])
def test_rayjob_entrypoint_runs_existing_jobs_scripts_with_valid_flags(where, obj, parse_only):
    commands = _commands(obj["spec"]["entrypoint"])
    assert commands
    for words in commands:
        assert words[0] == "python", f"{where}: {words}"
        module = _job_script(words[1])
        for word in words[2:]:
            if word.startswith(APP_DIR + "/"):
                assert (ROOT / word[len(APP_DIR) + 1 :]).exists(), f"{where}: {word} is not in the image"
        with pytest.raises(_Parsed) as parsed:
            module.main(words[2:])
        assert parsed.value.namespace is not None


@pytest.mark.parametrize(("where", "obj"), RAYJOBS, ids=[w for w, _ in RAYJOBS])
def test_rayjob_runtime_env_is_a_valid_ray_runtime_env(where, obj):
    from ray.runtime_env import RuntimeEnv

    runtime_env = yaml.safe_load(obj["spec"]["runtimeEnvYAML"])
    assert set(runtime_env) <= RuntimeEnv.known_fields
    RuntimeEnv(**runtime_env)
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"].startswith("http://")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "jobs").glob("runtime_env*.yaml")))
def test_runtime_env_examples_are_valid(name):
    from ray.runtime_env import RuntimeEnv

    from raysys.jobs import load_runtime_env

    runtime_env = load_runtime_env(ROOT / "jobs" / name)
    assert set(runtime_env) <= RuntimeEnv.known_fields
    RuntimeEnv(**runtime_env)
    assert runtime_env["working_dir"] == "."
    assert {".git", ".venv"} <= set(runtime_env["excludes"])
    assert "MLFLOW_TRACKING_URI" in runtime_env["env_vars"]


@pytest.mark.parametrize("script", sorted(p.stem for p in (ROOT / "jobs").glob("*.py")))
def test_jobs_script_is_the_cli_subcommand(script, capsys):
    module = _job_script(f"{APP_DIR}/jobs/{script}.py")
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0
    assert script in capsys.readouterr().out


# --------------------------------------------------------------------------- serveConfigV2


RAYSERVICES = _by_kind("RayService")


@pytest.mark.parametrize(("where", "obj"), RAYSERVICES, ids=[w for w, _ in RAYSERVICES])
def test_serve_config_is_a_valid_serve_deploy_schema(where, obj):
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(obj["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["name"] == "raysys" and app["route_prefix"] == "/"
    assert app["import_path"] == "raysys.serve.app:app_builder"
    assert app["args"]["model_uri"] == "models:/raysys-detector@champion"
    assert app["args"]["tracking_uri"] == "http://mlflow.raysys.svc:5000"
    (deployment,) = app["deployments"]
    assert deployment["name"] == "AnomalyDetector"
    assert set(deployment["autoscaling_config"]) >= {"min_replicas", "max_replicas", "target_ongoing_requests"}
    assert set(deployment["user_config"]) == {"max_batch_size", "batch_wait_timeout_s"}
    assert UserConfig.model_validate(deployment["user_config"]) == UserConfig()  # raysys's batching defaults


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory) -> str:
    """A local MLflow registry holding models:/raysys-detector@champion (no network needed)."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    (root / "model").mkdir()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("raysys-detector")
    version = client.create_model_version("raysys-detector", source=str(root / "model"), run_id=None)
    client.set_registered_model_alias("raysys-detector", "champion", version.version)
    return uri


@pytest.mark.parametrize(("where", "obj"), RAYSERVICES, ids=[w for w, _ in RAYSERVICES])
def test_serve_config_import_path_builds_an_app_with_its_deployments(where, obj, local_registry):
    """Import the builder, build the application with the config's args and check that every
    deployment the config configures exists in it. The in-cluster tracking_uri is swapped for a
    local registry with the same model name and alias (the builder resolves the alias)."""
    from ray import serve
    from ray.serve._private.build_app import build_app

    config = yaml.safe_load(obj["spec"]["serveConfigV2"])
    for app in config["applications"]:
        module_name, _, attribute = app["import_path"].partition(":")
        builder = getattr(importlib.import_module(module_name), attribute, None)
        assert callable(builder), f"{app['import_path']} is not a callable"
        args = {**app.get("args", {}), "tracking_uri": local_registry}
        application = builder(args)
        assert isinstance(application, serve.Application)
        built = build_app(application, name=app["name"])
        deployments = {d.name: d for d in built.deployments}
        for wanted in app.get("deployments", []):
            assert wanted["name"] in deployments, f"{wanted['name']} not in {sorted(deployments)}"
            if "user_config" in wanted:
                target = deployments[wanted["name"]].func_or_class
                assert callable(getattr(target, "reconfigure", None)), f"{wanted['name']} has no reconfigure()"


def test_serve_user_config_is_what_the_detector_accepts():
    from raysys.serve.config import UserConfig

    for _, obj in RAYSERVICES:
        (app,) = yaml.safe_load(obj["spec"]["serveConfigV2"])["applications"]
        for deployment in app["deployments"]:
            UserConfig.model_validate(deployment["user_config"])


# --------------------------------------------------------------------------- serve defaults

#: The chart's rayService serve settings (keys under rayService in values.yaml) -> the raysys.serve.config
#: field that owns the setting's default and bounds. values.yaml and values.schema.json copy them.
SERVE_SETTINGS: dict[str, tuple[type[BaseModel], str]] = {
    "autoscaling.minReplicas": (AutoscalingSettings, "min_replicas"),
    "autoscaling.maxReplicas": (AutoscalingSettings, "max_replicas"),
    "autoscaling.targetOngoingRequests": (AutoscalingSettings, "target_ongoing_requests"),
    "autoscaling.upscaleDelayS": (AutoscalingSettings, "upscale_delay_s"),
    "autoscaling.downscaleDelayS": (AutoscalingSettings, "downscale_delay_s"),
    "autoscaling.lookBackPeriodS": (AutoscalingSettings, "look_back_period_s"),
    "batching.maxBatchSize": (UserConfig, "max_batch_size"),
    "batching.batchWaitTimeoutS": (UserConfig, "batch_wait_timeout_s"),
    "numCpus": (DeploymentSettings, "num_cpus"),
    "ingress": (ServeConfig, "ingress"),
    "throughputOptimized": (ServeConfig, "throughput_optimized"),
    "retryOn": (ServeConfig, "retry_on"),
    "maxModelsPerReplica": (AppArgs, "max_models_per_replica"),
}
#: rayService keys with no raysys.serve.config counterpart: the chart's own switch, the model the
#: RayService serves (``raysys serve`` has no default model), per-replica GPUs and the pods' grace
#: period (chart-only; test_rayservice_pods_outlast_serves_drain checks it against Serve's drain), and whether
#: the model is a fleet (``raysys serve`` reads that from the model).
CHART_ONLY_SETTINGS = {"enabled", "modelUri", "numGpus", "terminationGracePeriodSeconds", "fleet"}
#: annotated_types constraint -> JSON Schema keyword (draft-07 numbers).
_BOUND_KEYWORDS = {
    annotated_types.Ge: ("ge", "minimum"),
    annotated_types.Gt: ("gt", "exclusiveMinimum"),
    annotated_types.Le: ("le", "maximum"),
    annotated_types.Lt: ("lt", "exclusiveMaximum"),
}
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _leaves(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _schema_node(key: str) -> dict[str, Any]:
    node = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))["properties"]["rayService"]
    for part in key.split("."):
        node = node["properties"][part]
    return node


def _field_bounds(model: type[BaseModel], field: str) -> dict[str, Any]:
    """The field's ge/gt/le/lt constraints as JSON Schema keywords."""
    bounds = {}
    for constraint in model.model_fields[field].metadata:
        if type(constraint) in _BOUND_KEYWORDS:
            attribute, keyword = _BOUND_KEYWORDS[type(constraint)]
            bounds[keyword] = getattr(constraint, attribute)
    return bounds


def _chart_defaults() -> dict[str, Any]:
    return _leaves(yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))["rayService"])


def test_every_rayservice_setting_is_mapped_to_its_python_home():
    assert set(_chart_defaults()) == set(SERVE_SETTINGS) | CHART_ONLY_SETTINGS
    assert not set(SERVE_SETTINGS) & CHART_ONLY_SETTINGS


@pytest.mark.parametrize("key", sorted(SERVE_SETTINGS))
def test_chart_serve_default_is_the_python_default(key):
    model, field = SERVE_SETTINGS[key]
    expected = model.model_fields[field].default
    got = _chart_defaults()[key]
    assert got == expected and type(got) in (type(expected), int), \
        f"values.yaml rayService.{key} = {got!r}, {model.__name__}.{field} defaults to {expected!r}"


@pytest.mark.parametrize("key", sorted(SERVE_SETTINGS))
def test_values_schema_bounds_are_the_pydantic_constraints(key):
    model, field = SERVE_SETTINGS[key]
    info = model.model_fields[field]
    node = _schema_node(key)
    keywords = {k: node[k] for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum") if k in node}
    assert keywords == _field_bounds(model, field), f"rayService.{key} vs {model.__name__}.{field}"
    choices = getattr(info.annotation, "__args__", None) if str(info.annotation).startswith("typing.Literal") else None
    if choices is not None:
        assert node["type"] == "string" and node["enum"] == list(choices)
    else:
        assert node["type"] == _JSON_TYPES[info.annotation]


def _just_outside(keyword: str, bound: float, json_type: str) -> float:
    step = 1 if json_type == "integer" else 0.5
    return {"minimum": bound - step, "exclusiveMinimum": bound, "maximum": bound + step, "exclusiveMaximum": bound}[keyword]


def _nested(key: str, value: Any) -> dict[str, Any]:
    for part in reversed(key.split(".")):
        value = {part: value}
    return {"rayService": value}


OUT_OF_BOUNDS = [
    (key, keyword, _just_outside(keyword, bound, _schema_node(key)["type"]))
    for key, (model, field) in sorted(SERVE_SETTINGS.items())
    for keyword, bound in _field_bounds(model, field).items()
]


@pytest.mark.parametrize(("key", "keyword", "value"), OUT_OF_BOUNDS, ids=[f"{k}-{w}" for k, w, _ in OUT_OF_BOUNDS])
def test_chart_rejects_a_serve_setting_raysys_rejects(key, keyword, value):
    """helm install/template fails on a value the Python model would refuse (e.g. maxBatchSize: 0)."""
    import helm_python

    model, field = SERVE_SETTINGS[key]
    with pytest.raises(helm_python.HelmValuesError):
        generate.render_chart(_nested(key, value))
    with pytest.raises(ValueError):
        model.model_validate({field: value})


def test_rayservice_rendered_with_chart_defaults_serves_with_the_python_defaults():
    """The RayService's serveConfigV2, parsed by Ray's ServeDeploySchema, deploys raysys's defaults.
    autoscaling_config must be complete: Serve replaces the code's autoscaling_config with it and fills
    missing keys with Ray's defaults. user_config is read by UserConfig, which fills in the rest."""
    from ray.serve.schema import ServeDeploySchema

    rendered = generate.render_chart({"rayService": {"enabled": True}})
    (service,) = [obj for text in rendered.values() for obj in _documents(text) if obj["kind"] == "RayService"]
    schema = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (app,) = schema.applications
    (deployment,) = app.deployments
    assert deployment.name == "AnomalyDetector"
    assert deployment.autoscaling_config == AutoscalingSettings().model_dump(exclude_none=True)
    assert UserConfig.model_validate(deployment.user_config) == UserConfig()
    assert deployment.user_config == {k: v for k, v in UserConfig().model_dump().items() if k in deployment.user_config}
    assert deployment.ray_actor_options.num_cpus == DeploymentSettings().num_cpus
    assert deployment.ray_actor_options.num_gpus is None  # useGpu is off by default
