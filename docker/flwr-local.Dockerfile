# Local stand-ins for Flower's official flwr/superlink, flwr/supernode and
# flwr/superexec images, for machines that cannot pull from Docker Hub.
# docker/build-local-images.sh builds them on a debootstrapped Debian base and
# tags them with the official names, so the compose files run unchanged:
#
#   docker build -f docker/flwr-local.Dockerfile --target superlink -t flwr/superlink:1.42.0 docker
#
# Like the official images: flwr (no extras) from PyPI in the virtualenv
# /python/venv, owned by the non-root user `app` (uid 49999) that the
# containers run as, HOME and WORKDIR /app, and one entrypoint per image
# (flower-superlink, flower-supernode, flower-superexec). Unlike them: Debian
# bookworm's Python 3.11 instead of a pyenv-built one.
ARG BASE_IMAGE=fedalign-local/python:bookworm
FROM ${BASE_IMAGE} AS base

ARG FLWR_VERSION=1.42.0
# PIP_FIND_LINKS: an optional wheelhouse URL (build-local-images.sh serves one); PyPI stays the index.
ARG PIP_FIND_LINKS=
RUN useradd --no-create-home --home-dir /app --uid 49999 --user-group --shell /bin/sh app \
    && python3 -m venv /python/venv \
    && /python/venv/bin/python -m pip install --no-cache-dir --disable-pip-version-check \
         "flwr==${FLWR_VERSION}" \
    && mkdir -p /app \
    && chown -R app:app /app /python/venv \
    && /python/venv/bin/flower-superlink --help >/dev/null

ENV PATH=/python/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONIOENCODING=UTF-8 \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8

WORKDIR /app
USER app
ENV HOME=/app

FROM base AS superlink
ENTRYPOINT ["flower-superlink"]

FROM base AS supernode
ENTRYPOINT ["flower-supernode"]

FROM base AS superexec
ENTRYPOINT ["flower-superexec"]
