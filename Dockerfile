# Sluice server image (Debian 12).
#
#   docker build -t sluice .
#   docker run -p 8080:8080 \
#     -e SLUICE_DATABASE_URL='postgresql://user:pass@db:5432/sluice' \
#     -e SLUICE_REDIS_URL='redis://redis:6379/0' \
#     -e SLUICE_ADMIN_KEY="$(openssl rand -hex 32)" \
#     -v sluice-blobs:/var/lib/sluice/blobs sluice
#
# Environment read by the shipped config (/etc/sluice/sluice.yaml, a copy of
# config/sluice.yaml; mount your own over it for S3, services, pipelines):
#   SLUICE_DATABASE_URL   libpq connection string or URI (required)
#   SLUICE_REDIS_URL      redis://host:port/db (optional; without it limits
#                         and events stay process-local)
#   SLUICE_ADMIN_KEY      the admin API key (POST /v1/admin/tenants)
#   SLUICE_LISTEN         listen address (image default 0.0.0.0:8080)
#   SLUICE_STORAGE_PATH   fs storage root (image default /var/lib/sluice/blobs)
# The schema migrations are applied at start. Flows are read from
# /opt/sluice/lua-flows (the working directory is /opt/sluice).

# ---- build stage ----------------------------------------------------------
FROM debian:12-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libevent-dev libhiredis-dev libpq-dev \
      libcurl4-openssl-dev libfyaml-dev liblua5.4-dev libhttp-parser-dev \
      libssl-dev libmagic-dev libjansson-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
 && cmake --build /build -j"$(nproc)" --target sluice

# ---- runtime stage --------------------------------------------------------
FROM debian:12-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libevent-2.1-7 libevent-pthreads-2.1-7 libhiredis0.14 libpq5 libcurl4 \
      libfyaml0 liblua5.4-0 lua-cjson libhttp-parser2.9 libssl3 libmagic1 \
      libmagic-mgc libjansson4 ca-certificates curl \
      tesseract-ocr tesseract-ocr-eng poppler-utils libvips-tools unzip \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/sluice --shell /usr/sbin/nologin sluice \
 && mkdir -p /var/lib/sluice/blobs /etc/sluice \
 && chown -R sluice:sluice /var/lib/sluice
COPY --from=build /build/sluice /usr/local/bin/sluice
COPY lua-flows /opt/sluice/lua-flows
COPY web /opt/sluice/web
COPY config/sluice.yaml /etc/sluice/sluice.yaml
WORKDIR /opt/sluice
ENV SLUICE_LISTEN=0.0.0.0:8080 \
    SLUICE_STORAGE_PATH=/var/lib/sluice/blobs
USER sluice
EXPOSE 8080
VOLUME ["/var/lib/sluice/blobs"]
HEALTHCHECK --interval=30s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
CMD ["sluice", "--config", "/etc/sluice/sluice.yaml"]
