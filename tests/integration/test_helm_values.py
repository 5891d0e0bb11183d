"""The chart's production values, rendered: each reaches the object it is for, bad ones are
refused with a message that says what to set, and the policy is validated before it acts.

Renders come from `helm template` (Helm 4, from `make setup`); the Redis URLs are expanded as
the kubelet expands `$(VAR)` and handed to mcp-authz's own Redis client; the validating init
container's and hook Job's command lines are run against the policy they would mount.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from authz.limits.redis_client import connect
from tests.integration.test_k8s_manifests import (
    DEFAULT_VALUES,
    MCP_IMAGE,
    Doc,
    check_pod_hardening,
    container,
    deep_merge,
    env_of,
    find,
    helm_template,
    helm_values,
    is_hook,
    one,
    schema_errors,
    selects,
    sidecar_deployment,
    tool,
)

PASSWORD = "s3cr3t-Pa55_word"  # noqa: S105 - a test value, URL-safe
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Doc, ...]]:
    cases = ("defaults", "production", "cluster-redis-pod-monitor", "admin-and-console")
    return {c: helm_template(helm_values(c), tmp_path_factory.mktemp(c)) for c in cases}


def pod_spec(deployment: Doc) -> Doc:
    spec: Doc = deployment["spec"]["template"]["spec"]
    return spec


def init_container(deployment: Doc) -> Doc:
    (found,) = pod_spec(deployment)["initContainers"]
    return dict(found)


# ============================================================== values reach their objects


def test_production_values_reach_the_pod(renders: dict[str, tuple[Doc, ...]]) -> None:
    docs = renders["production"]
    deployment = sidecar_deployment(docs)
    assert deployment["metadata"]["name"] == "tools-gateway"
    for kind in ("Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy"):
        assert find(docs, kind, "tools-gateway" if kind != "ConfigMap" else "tools-gateway-env")
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "payments"
    assert "team" not in deployment["spec"]["selector"]["matchLabels"]
    pod = pod_spec(deployment)
    assert pod["securityContext"]["fsGroup"] == 10001
    assert pod["priorityClassName"] == "gateway-critical"
    authz = container(deployment, "mcp-authz")
    assert authz["securityContext"]["runAsUser"] == 10002
    assert container(deployment, "mcp-server")["securityContext"]["runAsUser"] == 1000
    check_pod_hardening(pod)  # the additions weakened nothing
    image = f"ghcr.io/mcp-authz/mcp-authz@{DIGEST}"
    assert authz["image"] == init_container(deployment)["image"] == image
    hooks = [d for d in docs if is_hook(d) and d["kind"] in ("Pod", "Job")]
    assert len(hooks) == 2
    for hook in hooks:
        spec = hook["spec"] if hook["kind"] == "Pod" else hook["spec"]["template"]["spec"]
        assert [c["image"] for c in spec["containers"]] == [image], hook["metadata"]["name"]
        # They run where the gateway's pods may, and as they do.
        for key in ("nodeSelector", "tolerations", "securityContext"):
            assert spec[key] == pod[key], (hook["metadata"]["name"], key)
    assert {"name": "grants", "secret": {"secretName": "grants"}} in pod["volumes"]
    assert {"name": "grants", "mountPath": "/etc/grants", "readOnly": True} in authz["volumeMounts"]
    assert env_of(docs, authz)["MCP_AUTHZ_REDIS_TIMEOUT"] == "0.2"
    account = one(docs, "ServiceAccount")
    assert account["metadata"]["name"] == pod["serviceAccountName"] == "tools-gateway"
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]


def test_an_existing_service_account(renders: dict[str, tuple[Doc, ...]]) -> None:
    docs = renders["cluster-redis-pod-monitor"]
    assert find(docs, "ServiceAccount") == []
    assert pod_spec(sidecar_deployment(docs))["serviceAccountName"] == "mcp-tools"


def test_the_default_image_is_the_published_one(renders: dict[str, tuple[Doc, ...]]) -> None:
    chart = json.loads(json.dumps(DEFAULT_VALUES))
    authz = container(sidecar_deployment(renders["defaults"]), "mcp-authz")
    assert authz["image"] == f"ghcr.io/mcp-authz/mcp-authz:{chart['image']['tag']}"


# ======================================================== Redis URLs, password from a Secret


def kubelet_env(c: Doc, secrets: dict[str, str]) -> dict[str, str]:
    """The container's env entries as the kubelet resolves them: secretKeyRef values from
    `secrets` (by key), and $(VAR) replaced by the value of an entry defined before it."""
    env: dict[str, str] = {}
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m[1], m[0]),
                var["value"],
            )
        elif "secretKeyRef" in var["valueFrom"]:
            env[var["name"]] = secrets[var["valueFrom"]["secretKeyRef"]["key"]]
    return env


URLS = {
    "redis": "redis://redis.example.com:6379/0",
    "rediss with user": "rediss://mcp-authz:$(MCP_AUTHZ_REDIS_PASSWORD)@redis.example.com:6380/0",
    "unix": "unix:///var/run/redis/redis.sock",
    "unix with db": "unix:///var/run/redis/redis.sock?db=2",
    "sentinel": "redis+sentinel://sentinel-0:26379,sentinel-1:26379/mymaster/0",
    "cluster": "rediss+cluster://redis-0:6379,redis-1:6379",
}


@pytest.mark.parametrize("url", URLS.values(), ids=URLS)
def test_the_redis_password_from_a_secret_reaches_the_client(url: str, tmp_path: Path) -> None:
    values = {"replicas": 2, "redis": {"url": url, "passwordSecret": {"name": "redis-auth"}}}
    docs = helm_template(deep_merge({"mcpServer": MCP_IMAGE}, values), tmp_path)
    authz = container(sidecar_deployment(docs), "mcp-authz")
    (secret_ref,) = [v for v in authz["env"] if v["name"] == "MCP_AUTHZ_REDIS_PASSWORD"]
    assert secret_ref["valueFrom"]["secretKeyRef"] == {
        "name": "redis-auth",
        "key": "redis-password",
    }
    # Never in the ConfigMap: the URL there would lack the password, and win or lose by order.
    assert "MCP_AUTHZ_REDIS_URL" not in one(docs, "ConfigMap", "demo-env")["data"]
    resolved = kubelet_env(authz, {"redis-password": PASSWORD})["MCP_AUTHZ_REDIS_URL"]
    assert PASSWORD in resolved
    client, _ = connect(resolved, 0.1)
    kwargs: dict[str, Any] = getattr(client, "connection_kwargs", None) or (
        client.connection_pool.connection_kwargs  # type: ignore[union-attr]
    )
    assert kwargs["password"] == PASSWORD
    if "mcp-authz:" in url:
        assert kwargs["username"] == "mcp-authz"


def test_a_whole_url_from_a_secret_still_works(tmp_path: Path) -> None:
    values = {"redis": {"existingSecret": {"name": "redis", "key": "url"}}}
    docs = helm_template(deep_merge({"mcpServer": MCP_IMAGE}, values), tmp_path)
    authz = container(sidecar_deployment(docs), "mcp-authz")
    (url,) = [v for v in authz["env"] if v["name"] == "MCP_AUTHZ_REDIS_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "url"}


# ==================================================================== schema messages

# Each bad value, and what the refusal must tell the user to do.
FIXES: dict[str, tuple[Doc, str]] = {
    "replicas without a store": (
        {"replicas": 3},
        "replicas > 1 needs a shared counter store: set redis.url, redis.existingSecret.name "
        "or redis.deploy: true",
    ),
    "two stores": (
        {"redis": {"url": "redis://r:6379/0", "deploy": True}},
        "set one counter store: redis.url or redis.deploy, not both",
    ),
    "password without url": (
        {"redis": {"passwordSecret": {"name": "redis-auth"}}},
        "redis.passwordSecret needs redis.url",
    ),
    "username without placeholder": (
        {"redis": {"url": "redis://me@r:6379/0", "passwordSecret": {"name": "redis-auth"}}},
        "redis://USER:$(MCP_AUTHZ_REDIS_PASSWORD)@host",
    ),
    "jwt with the shipped Envoy": (
        {"identity": {"source": "jwt"}},
        "identity.source other than none needs envoy.existingConfigMap",
    ),
    "privilege escalation": (
        {"securityContext": {"allowPrivilegeEscalation": True}},
        "remove securityContext.allowPrivilegeEscalation",
    ),
    "root MCP server": (
        {"mcpServer": {"securityContext": {"runAsUser": 0}}},
        "set securityContext.runAsUser to a non-zero uid",
    ),
    "pod as root": (
        {"podSecurityContext": {"runAsNonRoot": False}},
        "remove podSecurityContext.runAsNonRoot",
    ),
    "added capability": (
        {"securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}},
        "remove securityContext.capabilities.add",
    ),
    "both monitors": (
        {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
        "enable serviceMonitor or podMonitor, not both",
    ),
    "alerts without metrics": (
        {"metrics": {"enabled": False}, "prometheusRule": {"enabled": True}},
        "prometheusRule needs metrics.enabled: true",
    ),
    "service account without name": (
        {"serviceAccount": {"create": False}},
        "serviceAccount.create: false needs serviceAccount.name",
    ),
    "admin without tokens": (
        {"admin": {"enabled": True, "from": [{"podSelector": {}}]}},
        "admin.enabled needs admin.tokensSecret.name",
    ),
    "admin open to all": (
        {"admin": {"enabled": True, "tokensSecret": {"name": "t"}}},
        "admin.enabled needs admin.from",
    ),
    "console without sign-in": (
        {
            "console": {
                "enabled": True,
                "publicUrl": "https://c.example.com",
                "from": [{"podSelector": {}}],
            }
        },
        "console.enabled needs a sign-in",
    ),
    "console without roles": (
        {
            "console": {
                "enabled": True,
                "publicUrl": "https://c.example.com",
                "from": [{"podSelector": {}}],
                "trustedHeader": "x-forwarded-email",
            }
        },
        "console.enabled needs console.roles",
    ),
    "console replicas without a shared session key": (
        {"replicas": 2, "redis": {"deploy": True}, "console": {"enabled": True}},
        "console with replicas > 1 needs console.sessionSecret.name",
    ),
    "console OIDC without its secret": (
        {
            "console": {
                "enabled": True,
                "publicUrl": "https://c.example.com",
                "from": [{"podSelector": {}}],
                "oidc": {"issuer": "https://login.example.com", "clientId": "c"},
            }
        },
        "console.oidc.issuer needs console.oidc.clientSecret.name",
    ),
    "console trusted header open to all": (
        {
            "console": {
                "enabled": True,
                "publicUrl": "https://c.example.com",
                "trustedHeader": "x-forwarded-user",
            }
        },
        "console.enabled needs console.from",
    ),
}


@pytest.mark.parametrize(("override", "fix"), FIXES.values(), ids=FIXES)
def test_a_refusal_says_what_to_set(override: Doc, fix: str) -> None:
    assert any(fix in message for message in schema_errors(override)), schema_errors(override)


@pytest.mark.parametrize(
    "name", ["replicas without a store", "admin open to all", "privilege escalation"]
)
def test_helm_prints_the_fix(name: str, tmp_path: Path) -> None:
    override, fix = FIXES[name]
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(deep_merge({"mcpServer": MCP_IMAGE}, override)))
    result = subprocess.run(
        [
            tool("helm"),
            "template",
            "demo",
            str(Path(__file__).parents[2] / "deploy" / "k8s" / "helm" / "mcp-authz"),
            "-f",
            str(values_file),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert f"missing property 'FIX: {fix}" in result.stderr


@pytest.mark.parametrize(
    "override",
    [
        {"podLabels": {"app.kubernetes.io/name": "x"}},
        {"image": {"digest": "sha256:short"}},
        {"redis": {"url": "memcached://m:11211"}},
        {"fullnameOverride": "Not_A_Name"},
        {"extraVolumeMounts": [{"name": "x", "mountPath": "/etc/mcp-authz"}]},
    ],
    ids=["selector label", "short digest", "other scheme", "bad name", "over the policy"],
)
def test_the_schema_refuses(override: Doc) -> None:
    assert schema_errors(override)


# ============================================================ the policy, validated first


def validate_run(c: Doc, env: dict[str, str], files: dict[str, str], tmp_path: Path) -> Any:
    """Runs the container's `mcp-authz validate ...` here, on `files` at its policy mount."""
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "policy"]
    mounted = tmp_path / "mount"
    mounted.mkdir()
    for key, text in files.items():
        (mounted / key).write_text(text)
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in c["args"]]
    args = [a.replace(mount["mountPath"], str(mounted)) for a in args]
    assert args[0] == "validate"
    return subprocess.run(
        [sys.executable, "-m", "authz", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


TYPO_POLICY = {"version": "1", "defualt": "deny", "tools": {"search": {}}}


@pytest.mark.parametrize("policy", [TYPO_POLICY, {"version": "1", "default": "deny"}])
def test_the_init_container_stops_a_bad_policy(policy: Doc, tmp_path: Path) -> None:
    docs = helm_template(
        deep_merge({"mcpServer": MCP_IMAGE}, {"policy": {"inline": policy}}), tmp_path
    )
    deployment = sidecar_deployment(docs)
    check = init_container(deployment)
    assert check["terminationMessagePolicy"] == "FallbackToLogsOnError"
    files = one(docs, "ConfigMap", "demo-policy")["data"]
    result = validate_run(check, env_of(docs, check), files, tmp_path)
    if policy is TYPO_POLICY:
        assert result.returncode == 2
        assert "defualt" in result.stderr
    else:
        assert result.returncode == 0, result.stderr


def test_the_upgrade_hook_validates_the_policy_about_to_be_applied(tmp_path: Path) -> None:
    docs = helm_template(
        deep_merge({"mcpServer": MCP_IMAGE}, {"policy": {"inline": TYPO_POLICY}}), tmp_path
    )
    job = one(docs, "Job", "demo-policy-check")
    hook_config = one(docs, "ConfigMap", "demo-policy-check")
    for hook in (job, hook_config):
        annotations = hook["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    weights = [int(h["metadata"]["annotations"]["helm.sh/hook-weight"]) for h in (hook_config, job)]
    assert weights[0] < weights[1], "the ConfigMap must exist before the Job"
    assert hook_config["data"] == one(docs, "ConfigMap", "demo-policy")["data"]
    spec = job["spec"]["template"]["spec"]
    check_pod_hardening(spec)
    assert job["spec"]["backoffLimit"] == 0
    (check,) = spec["containers"]
    (volume,) = spec["volumes"]
    assert volume["configMap"]["name"] == hook_config["metadata"]["name"]
    result = validate_run(check, {}, hook_config["data"], tmp_path)
    assert result.returncode == 2
    assert "defualt" in result.stderr


def test_no_hook_for_a_policy_the_chart_does_not_hold(tmp_path: Path) -> None:
    values = {"policy": {"existingConfigMap": "mine"}}
    docs = helm_template(deep_merge({"mcpServer": MCP_IMAGE}, values), tmp_path)
    assert find(docs, "Job") == []
    assert init_container(sidecar_deployment(docs))["name"] == "validate-policy"


# ======================================================================= helm test


def test_helm_test_sends_a_check_through_the_service(
    renders: dict[str, tuple[Doc, ...]], tmp_path: Path
) -> None:
    docs = renders["production"]
    pod = one(docs, "Pod", "tools-gateway-test-check")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    check_pod_hardening(pod["spec"])
    (check,) = pod["spec"]["containers"]
    assert check["args"][0] == "probe"
    url = check["args"][1]
    service = one(docs, "Service", "tools-gateway")
    (http,) = [p for p in service["spec"]["ports"] if p["targetPort"] == "http"]
    assert url == f"http://tools-gateway.default.svc:{http['port']}/mcp"
    # agentsFrom admits only the agents: the hook's NetworkPolicy admits the test pod, to
    # Envoy's port only, and exists only while the test runs.
    (netpol,) = [n for n in find(docs, "NetworkPolicy") if is_hook(n)]
    assert netpol["metadata"]["annotations"]["helm.sh/hook"] == "test"
    labels = sidecar_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert selects(netpol["spec"]["podSelector"]["matchLabels"], labels)
    (rule,) = netpol["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["http"]
    (peer,) = rule["from"]
    assert selects(peer["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    # The same command line here, at a closed port: the CLI takes it, and fails the test.
    args = [*check["args"][:1], "http://127.0.0.1:9/mcp", *check["args"][2:]]
    result = subprocess.run(
        [sys.executable, "-m", "authz", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "did not answer" in result.stderr


def test_without_agents_from_no_hook_network_policy(renders: dict[str, tuple[Doc, ...]]) -> None:
    assert [n for n in find(renders["defaults"], "NetworkPolicy") if is_hook(n)] == []
