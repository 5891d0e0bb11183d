# mcp-authz, the ext_authz gRPC service. The first stage builds our wheel and installs it with
# its dependencies into a virtual environment; the final stage gets only that environment, so it
# carries no compiler, no pip, no build backend and no source tree.
#
#   docker build -t REGISTRY/mcp-authz:0.1.0 .
#   docker run --read-only -p 9191:9191 REGISTRY/mcp-authz:0.1.0      # the seed policy
#
# Kubernetes: deploy/k8s (kustomize) and deploy/k8s/helm/mcp-authz; see docs/kubernetes.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md setup.py ./
COPY build_support/ build_support/
COPY authz/ authz/
# The environment is made without pip and filled by the base image's pip, so pip itself never
# reaches the final image. --only-binary: grpcio, hiredis and google-re2 ship manylinux wheels;
# should one stop doing so, the build fails here rather than wanting a compiler. Our own wheel
# is the compiled one (docs/performance.md, "A compiled hot path"): gcc and libc6-dev in this
# stage only, so `pip wheel .` compiles with mypyc, and the build fails if the result is not
# compiled; `--build-arg MCP_AUTHZ_PURE=1` builds the pure-Python image. The final stage gets
# the venv alone, no compiler. Not built where this was written (no container engine there):
# tests/integration/test_dockerfile.py reads it.
ARG MCP_AUTHZ_PURE=
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv --without-pip /opt/mcp-authz \
    && MCP_AUTHZ_PURE="${MCP_AUTHZ_PURE}" pip wheel --no-deps --wheel-dir /wheels . \
    && pip --python /opt/mcp-authz/bin/python install --only-binary=:all: /wheels/*.whl \
    && /opt/mcp-authz/bin/python -c "import authz.runner" \
    && { [ "${MCP_AUTHZ_PURE}" = 1 ] || /opt/mcp-authz/bin/python -c \
      "import authz.core.decision as d; assert d.__file__.endswith('.so'), d.__file__"; }

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mcp-authz" \
      org.opencontainers.image.description="Policy gateway for AI agents calling MCP tools: an Envoy ext_authz service" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin mcp-authz
COPY --from=build /opt/mcp-authz /opt/mcp-authz
COPY examples/policies/seed.json /etc/mcp-authz/policy.json
# Bytecode was compiled at install time; nothing is written at run time, so the root
# filesystem can be mounted read-only. In a container, loopback-only listening would be
# unreachable, hence 0.0.0.0; the pod's NetworkPolicy keeps 9191 to the pod itself.
ENV PATH=/opt/mcp-authz/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MCP_AUTHZ_POLICY=/etc/mcp-authz/policy.json \
    MCP_AUTHZ_LISTEN=0.0.0.0:9191
USER 10001:10001
# 9191 gRPC ext_authz and health; 9464 Prometheus /metrics when --metrics-listen is set.
EXPOSE 9191 9464
# The standard gRPC health service, asked with the gRPC client the service itself ships
# (Kubernetes uses its native grpc probe instead and ignores this).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, sys, grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; port = os.environ.get('MCP_AUTHZ_LISTEN', '127.0.0.1:9191').rpartition(':')[2]; reply = g.HealthStub(grpc.insecure_channel('127.0.0.1:' + port)).Check(h.HealthCheckRequest(), timeout=2); sys.exit(reply.status != h.HealthCheckResponse.SERVING)"]
ENTRYPOINT ["mcp-authz"]
CMD ["serve"]
