"""deploy/kubernetes/: every manifest validates against the Kubernetes 1.37 schemas (kubernetes-validate,
strict) and says what the live registry needs: probes, resources, a read-only store, HPA, PDB."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from glasses.config import REGISTRY_DIR_ENV_VAR

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
K8S_VERSION = "1.37.0"


def _documents() -> dict[str, dict]:
    docs = [d for f in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_every_manifest_is_valid_kubernetes():
    docs = _documents()
    assert {"Deployment", "Service", "PersistentVolumeClaim", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(docs)
    for doc in docs.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    broken = {**docs["Deployment"], "spec": {**docs["Deployment"]["spec"], "replicass": 2}}  # the validator bites
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_deployment_probes_resources_and_read_only_store():
    docs = _documents()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in container["resources"]["limits"]
    store_claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    store_mounts = [m for m in container["volumeMounts"] if m["name"] in store_claims]
    assert store_mounts and all(m.get("readOnly") for m in store_mounts)
    env = {e["name"]: e["value"] for e in container["env"]}
    registry_mount = [m for m in store_mounts if m["mountPath"] == env[REGISTRY_DIR_ENV_VAR]]
    assert registry_mount, "the alias file must come from the shared store"
    assert any(m["mountPath"] == f"{env['BENTOML_HOME']}/models" for m in store_mounts)
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", docs["Deployment"]["metadata"]["name"])
    assert docs["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2
