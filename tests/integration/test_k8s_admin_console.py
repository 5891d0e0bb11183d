"""The admin API and the console on Kubernetes: the chart's values and the admin-console
overlay, rendered and checked the same way.

Each must give mcp-authz settings it knows, every file a setting names must be mounted from
the Secret or ConfigMap meant for it, the Services must reach the ports mcp-authz listens on,
the Ingress must reach the console Service, and the NetworkPolicy must admit the admin and
console ports only from the peers named for them (never from everyone).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path, PurePosixPath

import pytest

from authz.console.config import build_console
from authz.settings import Settings
from tests.integration.test_k8s_manifests import (
    K8S,
    Doc,
    container,
    env_of,
    find,
    helm_template,
    helm_values,
    host_port,
    kustomize,
    one,
    port_of,
    selects,
    sidecar_deployment,
    validate_all,
)

SETTINGS = {f"MCP_AUTHZ_{f.name.upper()}" for f in dataclasses.fields(Settings)}


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Doc, ...]]:
    return {
        "helm": helm_template(helm_values("admin-and-console"), tmp_path_factory.mktemp("ac")),
        "kustomize": kustomize(K8S / "overlays" / "admin-console"),
    }


SOURCES = ("helm", "kustomize")


def gateway(docs: tuple[Doc, ...]) -> tuple[Doc, Doc, dict[str, str]]:
    """The sidecar Deployment, its mcp-authz container, and that container's settings."""
    deployment = sidecar_deployment(docs)
    authz = container(deployment, "mcp-authz")
    return deployment, authz, env_of(docs, authz)


def mounted_file(deployment: Doc, c: Doc, path: str) -> Doc:
    """The Secret or ConfigMap volume `path` comes from, with the key it is the file of."""
    file = PurePosixPath(path)
    (mount,) = [m for m in c["volumeMounts"] if file.parent == PurePosixPath(m["mountPath"])]
    assert mount.get("readOnly") is True, path
    (volume,) = [
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    ]
    source = volume.get("secret") or volume.get("configMap")
    assert source, f"{path} is not from a Secret or ConfigMap"
    if "items" not in source:  # every key of it, each a file of its name
        return {"volume": volume, "key": file.name}
    (item,) = [i for i in source["items"] if i["path"] == file.name]
    return {"volume": volume, "key": item["key"]}


@pytest.mark.parametrize("source", SOURCES)
def test_it_validates(source: str, renders: dict[str, tuple[Doc, ...]]) -> None:
    validate_all(renders[source])


@pytest.mark.parametrize("source", SOURCES)
def test_every_setting_is_one_mcp_authz_knows(
    source: str, renders: dict[str, tuple[Doc, ...]]
) -> None:
    docs = renders[source]
    _, _, env = gateway(docs)
    ours = {k for k in env if k.startswith("MCP_AUTHZ_")}
    assert ours - SETTINGS == set()
    assert {"MCP_AUTHZ_ADMIN_LISTEN", "MCP_AUTHZ_ADMIN_TOKENS_FILE"} <= ours
    assert {"MCP_AUTHZ_CONSOLE_LISTEN", "MCP_AUTHZ_CONSOLE_PUBLIC_URL"} <= ours


@pytest.mark.parametrize("source", SOURCES)
def test_tokens_and_client_secret_come_from_secrets(
    source: str, renders: dict[str, tuple[Doc, ...]]
) -> None:
    docs = renders[source]
    deployment, authz, env = gateway(docs)
    tokens = mounted_file(deployment, authz, env["MCP_AUTHZ_ADMIN_TOKENS_FILE"])
    assert "secret" in tokens["volume"]
    for setting in ("OIDC_CLIENT_SECRET_FILE", "SESSION_SECRET_FILE"):
        found = mounted_file(deployment, authz, env[f"MCP_AUTHZ_CONSOLE_{setting}"])
        assert "secret" in found["volume"], setting
    assert env["MCP_AUTHZ_CONSOLE_PUBLIC_URL"].startswith("https://")
    assert env["MCP_AUTHZ_CONSOLE_OIDC_ISSUER"].startswith("https://")
    # No secret in a ConfigMap: a secret setting names a file.
    for key in env:
        assert "SECRET" not in key or key.endswith("_FILE"), key


def test_the_chart_mounts_tls(renders: dict[str, tuple[Doc, ...]]) -> None:
    docs = renders["helm"]
    deployment, authz, env = gateway(docs)
    tls = ("MCP_AUTHZ_ADMIN_TLS_CERT", "MCP_AUTHZ_ADMIN_TLS_KEY", "MCP_AUTHZ_ADMIN_TLS_CLIENT_CA")
    for setting, key in zip(tls, ("tls.crt", "tls.key", "ca.crt"), strict=True):
        found = mounted_file(deployment, authz, env[setting])
        assert found["volume"]["secret"]["secretName"] == "mcp-authz-admin-tls"
        assert found["key"] == key
    assert env["MCP_AUTHZ_CONSOLE_TRACE_URL"].startswith("https://grafana.example.com/")
    assert env["MCP_AUTHZ_CONSOLE_REDACT_ARGS"] == "withdraw:args.iban,args.card_number"


@pytest.mark.parametrize("source", SOURCES)
def test_services_and_ingress_reach_the_listeners(
    source: str, renders: dict[str, tuple[Doc, ...]]
) -> None:
    docs = renders[source]
    deployment, authz, env = gateway(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for setting, port_name in (
        ("MCP_AUTHZ_ADMIN_LISTEN", "admin"),
        ("MCP_AUTHZ_CONSOLE_LISTEN", "console"),
    ):
        host, port = host_port(env[setting])
        assert host == "0.0.0.0"  # noqa: S104 - the pod's IP, for the Service
        assert port == port_of(authz, port_name)
        (service,) = [
            s
            for s in find(docs, "Service")
            if any(p["targetPort"] == port_name for p in s["spec"]["ports"])
        ]
        assert selects(service["spec"]["selector"], labels)
    (ingress,) = find(docs, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    console = one(docs, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in console["spec"]["ports"]}
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]
    assert env["MCP_AUTHZ_CONSOLE_PUBLIC_URL"] == f"https://{rule['host']}"


@pytest.mark.parametrize("source", SOURCES)
def test_the_network_policy_admits_operators_only(
    source: str, renders: dict[str, tuple[Doc, ...]]
) -> None:
    docs = renders[source]
    deployment = sidecar_deployment(docs)
    (netpol,) = [
        n
        for n in find(docs, "NetworkPolicy")
        if n["metadata"]["name"] == deployment["metadata"]["name"]
    ]
    rules = {port["port"]: rule for rule in netpol["spec"]["ingress"] for port in rule["ports"]}
    for port_name in ("admin", "console"):
        peers = rules[port_name]["from"]
        assert peers
        assert all(p.get("namespaceSelector") or p.get("podSelector") for p in peers)
        assert [p["port"] for p in rules[port_name]["ports"]] == [port_name]
    assert rules["admin"]["from"] != rules["console"]["from"]


@pytest.mark.parametrize("source", SOURCES)
def test_the_console_accepts_its_settings(
    source: str, renders: dict[str, tuple[Doc, ...]], tmp_path: Path
) -> None:
    """The console's own start-up checks (https issuer, a roles file it can load, a trace
    template with {trace_id}, a session key long enough), on the rendered settings, with each
    mounted file laid out here as the kubelet would mount it."""
    docs = renders[source]
    deployment, authz, env = gateway(docs)

    def file(setting: str, content: str) -> Path:
        found = mounted_file(deployment, authz, env[setting])
        config = found["volume"].get("configMap")
        if config:
            content = one(docs, "ConfigMap", config["name"])["data"][found["key"]]
        path = tmp_path / setting
        path.write_text(content)
        return path

    config = build_console(
        env["MCP_AUTHZ_CONSOLE_LISTEN"],
        public_url=env["MCP_AUTHZ_CONSOLE_PUBLIC_URL"],
        roles_file=file("MCP_AUTHZ_CONSOLE_ROLES_FILE", ""),
        oidc_issuer=env["MCP_AUTHZ_CONSOLE_OIDC_ISSUER"],
        oidc_client_id=env["MCP_AUTHZ_CONSOLE_OIDC_CLIENT_ID"],
        oidc_client_secret_file=file("MCP_AUTHZ_CONSOLE_OIDC_CLIENT_SECRET_FILE", "s" * 40),
        trace_url=env.get("MCP_AUTHZ_CONSOLE_TRACE_URL"),
        session_secret_file=file("MCP_AUTHZ_CONSOLE_SESSION_SECRET_FILE", "k" * 64),
        redact=[p for p in env.get("MCP_AUTHZ_CONSOLE_REDACT_ARGS", "").split(",") if p],
    )
    assert config.oidc is not None
    assert config.public_url == env["MCP_AUTHZ_CONSOLE_PUBLIC_URL"]
