"""deploy/k8s read as data (no kubectl here): the kinds, how they refer to each other, the probes, resources and
security context, and that they agree with the image and the server's settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.settings import SettingsError, load_settings
from tests.test_dockerfile import runtime_stage

K8S = Path(__file__).resolve().parent.parent / "deploy" / "k8s"


def _manifests() -> dict[str, list[dict[str, Any]]]:
    return {path.name: [d for d in yaml.safe_load_all(path.read_text()) if d] for path in sorted(K8S.glob("*.yaml"))}


MANIFESTS = _manifests()
BY_KIND: dict[tuple[str, str], dict[str, Any]] = {
    (doc["kind"], doc["metadata"]["name"]): doc
    for name, docs in MANIFESTS.items()
    if name != "kustomization.yaml"
    for doc in docs
}


def _pod(kind: str, name: str) -> dict[str, Any]:
    spec = BY_KIND[(kind, name)]["spec"]
    return spec["jobTemplate"]["spec"]["template"]["spec"] if kind == "CronJob" else spec["template"]["spec"]


def test_every_manifest_parses_and_the_kinds_are_there() -> None:
    kinds = {kind for kind, _ in BY_KIND}
    assert kinds == {"Deployment", "Service", "PersistentVolumeClaim", "Secret", "ConfigMap", "CronJob"}
    assert all(doc.get("apiVersion") for docs in MANIFESTS.values() for doc in docs)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    (kustomization,) = MANIFESTS["kustomization.yaml"]
    assert sorted(kustomization["resources"]) == sorted(set(MANIFESTS) - {"kustomization.yaml", "secret.example.yaml"})


def test_one_replica_recreated_never_two_writers() -> None:
    spec = BY_KIND[("Deployment", "tokenhub")]["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    (claim,) = [
        v["persistentVolumeClaim"]["claimName"]
        for v in _pod("Deployment", "tokenhub")["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert BY_KIND[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_probes_read_healthz_as_readiness_and_liveness() -> None:
    (container,) = _pod("Deployment", "tokenhub")["containers"]
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/healthz" and readiness["port"] == container["ports"][0]["name"]
    assert container["livenessProbe"]["exec"]["command"] == ["tokenhub", "healthcheck", "--live"]
    assert container["startupProbe"]["exec"]["command"] == ["tokenhub", "healthcheck", "--live"]


def test_resources_and_a_non_root_read_only_container_matching_the_image() -> None:
    image_uid = int(runtime_stage()["USER"][-1].split(":")[0])
    for kind, name in (("Deployment", "tokenhub"), ("CronJob", "tokenhub-backup")):
        pod = _pod(kind, name)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == image_uid
        for container in pod["containers"]:
            assert set(container["resources"]) == {"requests", "limits"}, name
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_the_settings_are_valid_and_agree_with_the_pod() -> None:
    config = BY_KIND[("ConfigMap", "tokenhub-config")]["data"]
    settings = load_settings(config)  # every value passes the server's own validation
    pod = _pod("Deployment", "tokenhub")
    (container,) = pod["containers"]
    assert (settings.host, settings.port) == ("0.0.0.0", container["ports"][0]["containerPort"])
    assert any(m["mountPath"] == str(settings.data_dir) for m in container["volumeMounts"])
    refs = {ref for source in container["envFrom"] for ref in source}
    assert refs == {"configMapRef", "secretRef"}
    assert container["envFrom"][0]["configMapRef"]["name"] == "tokenhub-config"
    assert container["envFrom"][1]["secretRef"] == {"name": "tokenhub-secrets", "optional": True}
    # SIGTERM comes after the preStop pause; the drain must finish before the kubelet's SIGKILL.
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pause + settings.shutdown_drain_secs < pod["terminationGracePeriodSeconds"]


def test_the_example_secret_is_refused_until_edited() -> None:
    secret = BY_KIND[("Secret", "tokenhub-secrets")]["stringData"]
    assert set(secret) == {"TOKENHUB_ADMIN_TOKEN", "TOKENHUB_VAULT_PASSWORD"}
    with pytest.raises(SettingsError, match="TOKENHUB_ADMIN_TOKEN"):
        load_settings(secret)


def test_the_service_reaches_the_pod() -> None:
    service = BY_KIND[("Service", "tokenhub")]["spec"]
    labels = BY_KIND[("Deployment", "tokenhub")]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    (container,) = _pod("Deployment", "tokenhub")["containers"]
    assert service["ports"][0]["targetPort"] in (p["name"] for p in container["ports"])


def test_backup_cronjob_runs_tokenhub_backup_next_to_the_server() -> None:
    cron = BY_KIND[("CronJob", "tokenhub-backup")]["spec"]
    assert cron["schedule"] == "0 */6 * * *" and cron["concurrencyPolicy"] == "Forbid"
    pod = _pod("CronJob", "tokenhub-backup")
    (container,) = pod["containers"]
    assert container["args"][:2] == ["backup", "--to"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims[mounts[container["args"][2]]] == "tokenhub-backups" and claims[mounts["/data"]] == "tokenhub-data"
    # The data volume is ReadWriteOnce: the backup pod must land on the server's node.
    (term,) = pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["labelSelector"]["matchLabels"] == {"app.kubernetes.io/name": "tokenhub"}
    for name in claims.values():
        assert name is None or ("PersistentVolumeClaim", name) in BY_KIND
