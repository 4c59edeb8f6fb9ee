# matrix-dma-bridge: the bridge (the default) or the sandbox gatekeeper
# (docker run --entrypoint python IMAGE -m bridge.sandbox -c /data/sandbox.yaml).
# Mount a volume at /data: the first start writes config.yaml there, the second the
# registration, the third runs the bridge (scripts/docker-entrypoint.sh).
FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# ffmpeg: voice notes become ogg/opus, videos get thumbnails. Debian's security updates
# are what the image should get, so its version is not pinned.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/matrix-dma-bridge
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY alembic ./alembic
COPY alembic.ini config.example.yaml sandbox.example.yaml ./
COPY scripts/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
# Editable: the package finds its migrations (alembic/) and config.example.yaml beside it.
RUN pip install --no-cache-dir -e . && useradd --system --uid 1337 --home /data bridge
USER 1337
VOLUME /data
WORKDIR /data
EXPOSE 29318
# The appservice's liveness probe, on appservice.port's default.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:29318/_matrix/mau/live', timeout=4)"]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD []
