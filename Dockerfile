# The aioreconcile controller image.
#
#   docker build -t aioreconcile:0.1.0 .           # needs bin/helm and bin/kubectl (or bin/kustomize)
#
# Build arguments:
#   BASE_IMAGE           a Debian bookworm image; the official python:3.11-slim-bookworm by default.
#                        A base without python3 (the tests' debootstrap image) gets Debian's python3.
#   VERSION, REVISION, SOURCE   the OCI labels org.opencontainers.image.{version,revision,source}.
#   PIP_INSTALL_OPTIONS  e.g. --no-index, to install only from the context's wheels/ directory.
#
# The context must hold bin/ with helm and kubectl (or kustomize): the renderers call them.
# docs/install.md says how to fill it; the tests stage the testenv's own binaries there.
# At run time: uid 65532, read-only root filesystem; HOME (/home/aioreconcile), /tmp and the
# git cache (/var/cache/aioreconcile) are the only places written: mount emptyDirs there.
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS base
# git for the sources (openssh-client for ssh:// remotes); python3 from Debian only when the
# base has none, so the official python image keeps its own interpreter.
RUN set -eux; \
    packages="git openssh-client ca-certificates"; \
    command -v python3 >/dev/null || packages="$packages python3 python3-venv"; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

FROM base AS build
ARG PIP_INSTALL_OPTIONS=""
COPY . /src
# Wheels in the context's wheels/ are preferred (offline builds); PyPI otherwise.
RUN set -eux; \
    python3 -m venv /opt/aioreconcile; \
    /opt/aioreconcile/bin/pip install --no-cache-dir --disable-pip-version-check \
        $PIP_INSTALL_OPTIONS --find-links /src/wheels /src; \
    /opt/aioreconcile/bin/aioreconcile --version

FROM base
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="aioreconcile" \
      org.opencontainers.image.description="Event-driven GitOps controller for Kubernetes" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=build /opt/aioreconcile /opt/aioreconcile
COPY bin/ /usr/local/bin/
RUN set -eux; \
    groupadd --gid 65532 aioreconcile; \
    useradd --uid 65532 --gid 65532 --home-dir /home/aioreconcile --no-create-home \
        --shell /usr/sbin/nologin aioreconcile; \
    install -d -o 65532 -g 65532 /home/aioreconcile /var/cache/aioreconcile; \
    helm version --short; \
    { kustomize version || kubectl version --client; }
ENV PATH=/opt/aioreconcile/bin:$PATH \
    HOME=/home/aioreconcile \
    XDG_CACHE_HOME=/var/cache/aioreconcile \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
WORKDIR /home/aioreconcile
ENTRYPOINT ["aioreconcile", "run"]
