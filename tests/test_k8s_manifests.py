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

from raysys.serve.config import AutoscalingSettings, DeploymentSettings, ServeConfig, UserConfig

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
        ("RayCluster", "raysys"),
        ("RayJob", "raysys-train"),
        ("RayJob", "raysys-sweep"),
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


@pytest.mark.parametrize(("ingress", "throughput"), [(None, None), ("haproxy", False), ("proxy", True)])
def test_rayservice_pods_start_serve_with_the_chosen_settings(ingress, throughput):
    """``rayService.ingress`` and ``.throughputOptimized`` reach every Ray container of the RayService as the
    env that ``raysys.serve.config.serve_env`` sets locally (defaults: haproxy, optimized); no other Ray
    cluster gets it."""
    from raysys.serve.config import serve_env

    values = generate.load_values(VALUES["all"])
    if ingress:
        values["rayService"].update(ingress=ingress, throughputOptimized=throughput)
    expected = serve_env(ingress or "haproxy", True if throughput is None else throughput)
    for _, text in generate.render_chart(values).items():
        for obj in _documents(text):
            for where, container in containers(obj) if obj["kind"] in RAY_KINDS else []:
                if where == "autoscaler" or where.startswith("submitter"):
                    continue
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                got = {k: env.get(k) for k in expected}
                assert got == (expected if obj["kind"] == "RayService" else dict.fromkeys(expected)), \
                    f"{obj['kind']} {where}: {env}"


def test_chart_auth_values_turn_on_token_auth():
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
    ],
    ids=["maxReplica", "modle", "bad-model", "bad-upscalingMode", "backendStore-url", "bad-ingress"],
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
}
#: rayService keys with no raysys.serve.config counterpart: the chart's own switch, the model the
#: RayService serves (``raysys serve`` has no default model), and per-replica GPUs (chart-only).
CHART_ONLY_SETTINGS = {"enabled", "modelUri", "numGpus"}
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
