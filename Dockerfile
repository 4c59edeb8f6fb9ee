# matrix-dma-bridge: the bridge (python -m bridge) or the sandbox gatekeeper
# (python -m bridge.sandbox). Mount a directory with config.yaml at /data.
FROM python:3.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# ffmpeg: voice notes become ogg/opus, videos get thumbnails.
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/matrix-dma-bridge
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY alembic ./alembic
COPY alembic.ini config.example.yaml sandbox.example.yaml ./
RUN pip install --no-cache-dir . && useradd --system --home /data bridge
USER bridge
VOLUME /data
WORKDIR /data
EXPOSE 29318
# First run: docker run -v $PWD:/data IMAGE -g   (writes registration.yaml, fills tokens)
ENTRYPOINT ["python", "-m", "bridge", "-c", "/data/config.yaml"]
CMD []
