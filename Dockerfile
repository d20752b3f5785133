# Sluice server image: Debian 12 (bookworm-slim), two stages, non-root.
#
#   docker build -t sluice .
#   docker run -p 8080:8080 \
#     -e SLUICE_DATABASE_URL='postgresql://user:pass@db:5432/sluice' \
#     -e SLUICE_REDIS_URL='redis://redis:6379/0' \
#     -e SLUICE_ADMIN_KEY="$(openssl rand -hex 32)" \
#     -v sluice-blobs:/var/lib/sluice/blobs sluice
#
# Without a Docker engine or a registry (as in CI here), scripts/test-image
# builds the same file with buildah from a debootstrap-made base; see
# docs/deploy.md. Build with "--format docker" there: OCI images have no
# HEALTHCHECK.
#
# Environment read by the shipped config (/etc/sluice/sluice.yaml, a copy of
# config/sluice.yaml; mount your own over it for S3, services, pipelines):
#   SLUICE_DATABASE_URL   libpq connection string or URI (required)
#   SLUICE_REDIS_URL      redis://host:port/db (optional; without it limits
#                         and events stay process-local)
#   SLUICE_ADMIN_KEY      the admin API key (POST /v1/admin/tenants)
#   SLUICE_LISTEN         listen address (image default 0.0.0.0:8080); the
#                         HEALTHCHECK follows its port
#   SLUICE_STORAGE_PATH   fs storage root (image default /var/lib/sluice/blobs)
#   SLUICE_LOG_LEVEL      debug | info | warn | error (default info)
# The schema migrations are applied at start. Flows are read from
# /opt/sluice/lua-flows (the working directory is /opt/sluice); runs' scratch
# space is /opt/sluice/var/tmp. The server runs as the user "sluice", so the
# tools it runs (tesseract, pdftoppm, vips) run as that user too.

# ---- build stage ----------------------------------------------------------
FROM debian:bookworm-slim AS build
# (the label marks this build's cached layers; scripts/test-image prunes the
# stale ones by it)
LABEL io.sluice.image=build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc libc6-dev make cmake pkg-config libevent-dev libhiredis-dev libpq-dev \
      libcurl4-openssl-dev libfyaml-dev liblua5.4-dev libhttp-parser-dev \
      libssl-dev libmagic-dev libjansson-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
 && cmake --build /build -j"$(nproc)" --target sluice \
 && strip --strip-debug /build/sluice

# ---- runtime stage --------------------------------------------------------
FROM debian:bookworm-slim
LABEL io.sluice.image=server
# Shared libraries of the binary, the tools the shipped flows run, curl for
# the HEALTHCHECK; nothing to build with.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libevent-2.1-7 libevent-pthreads-2.1-7 libhiredis0.14 libpq5 libcurl4 \
      libfyaml0 liblua5.4-0 libhttp-parser2.9 libssl3 libmagic1 libmagic-mgc \
      libjansson4 ca-certificates curl \
      tesseract-ocr tesseract-ocr-eng poppler-utils libvips-tools unzip \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --user-group --home-dir /var/lib/sluice --shell /usr/sbin/nologin sluice \
 && mkdir -p /var/lib/sluice/blobs /etc/sluice /opt/sluice/var/tmp \
 && chown -R sluice:sluice /var/lib/sluice /opt/sluice/var \
 && chmod 0700 /opt/sluice/var/tmp
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
# /readyz: 200 once the migrations ran and Postgres (and Redis, if set) answer.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${SLUICE_LISTEN##*:}/readyz" || exit 1
CMD ["sluice", "--config", "/etc/sluice/sluice.yaml"]
