"""The Helm chart (deploy/helm/voxline): `helm lint` and `helm template` pass with the default
and the test values, every rendered manifest validates against the Kubernetes schemas shipped
by kubernetes-validate (offline, strict: no unknown field), the KEDA ScaledObject, the
ServiceMonitor and the PrometheusRule against the models generated from their CRDs
(cloudcoil-models-keda and -prometheus-operator, with no field dropped), and the chart says
what the issue asks: static membership from the pod name, probes, secrets by reference only, no
replica past the partition count, the lag threshold's arithmetic. helm comes from `make setup`
(infra/platform.sh)."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import click
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from pydantic import BaseModel

from processor.ops.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "voxline"
TEST_VALUES = CHART / "ci" / "test-values.yaml"
KUBE_VERSION = "1.33.0"
CRD_MODELS: dict[str, type[BaseModel]] = {
    "ScaledObject": ScaledObject,
    "ServiceMonitor": ServiceMonitor,
    "PrometheusRule": PrometheusRule,
}


@cache
def helm() -> str:
    found = shutil.which("helm") or shutil.which("helm", path=str(ROOT / ".venv" / "bin"))
    if found is None:
        pytest.fail("helm is not installed: `make setup` builds it (infra/platform.sh)")
    return found


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120)


def render(*args: str) -> list[dict[str, Any]]:
    done = run_helm("template", "vx", str(CHART), "--kube-version", KUBE_VERSION, *args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


VALUE_SETS = {"defaults": (), "test-values": ("-f", str(TEST_VALUES))}


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_passes(values: tuple[str, ...]) -> None:
    done = run_helm("lint", "--strict", str(CHART), *values)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_manifest_validates_against_its_schema(values: tuple[str, ...]) -> None:
    docs = render(*values)
    assert {d["kind"] for d in docs} >= {"StatefulSet", "ConfigMap", "Service", "ScaledObject"}
    for doc in docs:
        model = CRD_MODELS.get(doc["kind"])
        if model is None:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        else:
            kept = model.model_validate(doc).model_dump(by_alias=True, exclude_unset=True)
            assert kept == doc, f"{doc['kind']}: fields its CRD does not have"


def test_an_unknown_field_fails_validation() -> None:
    """The checks above can fail: a misspelled field in either kind of manifest does."""
    docs = render("-f", str(TEST_VALUES))
    sts = of_kind(docs, "StatefulSet")
    sts["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBE_VERSION, strict=True)
    scaled = of_kind(docs, "ScaledObject")
    scaled["spec"]["maxReplicas"] = 3
    kept = ScaledObject.model_validate(scaled).model_dump(by_alias=True, exclude_unset=True)
    assert kept != scaled


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = of_kind(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert isinstance(c, dict)
    return c


def test_each_pod_is_a_static_member_named_after_itself() -> None:
    env = {e["name"]: e for e in container(render())["env"]}
    ref = env["VOXLINE_GROUP_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert ref == "metadata.name"


def test_probes_resources_and_the_config_file() -> None:
    docs = render()
    c = container(docs)
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"]["cpu"]
    assert c["resources"]["limits"]["memory"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}["config"]
    assert env["VOXLINE_CONFIG"] == f"{mount}/voxline.toml"
    assert "default_backend" in of_kind(docs, "ConfigMap")["data"]["voxline.toml"]
    assert of_kind(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def cli_variables() -> set[str]:
    names = {p.envvar for p in cli.params if isinstance(p.envvar, str)}
    for command in cli.commands.values():
        names |= {p.envvar for p in command.params if isinstance(p.envvar, str)}
    assert isinstance(cli, click.Group)
    return names


def test_every_variable_the_chart_sets_is_one_the_processor_reads() -> None:
    env = container(render("-f", str(TEST_VALUES)))["env"]
    ours = {e["name"] for e in env if e["name"].startswith(("VOXLINE_", "KAFKA_", "S3_"))}
    assert ours <= cli_variables(), sorted(ours - cli_variables())


def test_secrets_only_by_reference() -> None:
    docs = render("-f", str(TEST_VALUES))
    assert "Secret" not in {d["kind"] for d in docs}
    c = container(docs)
    for e in c["env"]:
        if any(word in e["name"] for word in ("PASSWORD", "SECRET", "KEY_ID", "API_KEY")):
            assert "value" not in e, e
            assert "secretKeyRef" in e["valueFrom"], e
    assert c["envFrom"] == [{"secretRef": {"name": "voxline-backend-keys"}}]


def test_keda_scales_on_the_request_topics_lag_within_the_partitions() -> None:
    docs = render("-f", str(TEST_VALUES))
    spec = of_kind(docs, "ScaledObject")["spec"]
    assert spec["scaleTargetRef"]["kind"] == "StatefulSet"
    assert "replicas" not in of_kind(docs, "StatefulSet")["spec"], "KEDA owns the count"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == "tts.requests"
    assert trigger["metadata"]["lagThreshold"] == str(4 * 30)
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (2, 8)
    fixed = render("--set", "autoscaling.enabled=false")
    assert of_kind(fixed, "StatefulSet")["spec"]["replicas"] == 2
    assert "ScaledObject" not in {d["kind"] for d in fixed}


def test_more_replicas_than_partitions_is_refused() -> None:
    done = run_helm(
        "template", "vx", str(CHART), "--kube-version", KUBE_VERSION,
        "--set", "kafka.partitions=6", "--set", "autoscaling.maxReplicas=7",
    )  # fmt: skip
    assert done.returncode != 0
    assert "autoscaling.maxReplicas (7) is above kafka.partitions (6)" in done.stderr


def test_the_prometheus_rule_carries_the_rules_file() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "voxline-rules.yaml").read_text())
    rendered = of_kind(render("-f", str(TEST_VALUES)), "PrometheusRule")
    assert rendered["spec"]["groups"] == rules["groups"]
