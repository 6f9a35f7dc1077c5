# Container image of file-system: `docker build -t file-system .`
# Runs as uid 10001 on a read-only root file system; writable paths are volumes (/scratch,
# /tmp, and /data for the single-node SQLite + local-directory default).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY entity entity
COPY migration migration
COPY cli cli
COPY src src
# The web console's files, embedded in the binary (src/routes/console.rs).
COPY web web
COPY benches benches
# No .git in the build context: pass the revision for `--version`
# (docker build --build-arg FS_GIT_REVISION=$(git rev-parse --short=12 HEAD) .).
ARG FS_GIT_REVISION=unknown
# The repository's release profile keeps line tables (debug = "line-tables-only", ~211 MB
# binary); the image needs none of them: no debug info and stripped symbols (~33 MB). Set here,
# for this build only, so local release builds and scripts/bench stay as they are.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked --bin file-system \
    && cp target/release/file-system /usr/local/bin/file-system

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="file-system" \
      org.opencontainers.image.description="S3-backed store for virtual-machine images (EdgeGallery file-system API)" \
      org.opencontainers.image.source="https://github.com/file-system/file-system" \
      org.opencontainers.image.licenses="Apache-2.0"
# qemu-img checks and slims images; CA certificates for S3 over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends qemu-utils ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 fs \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fs \
    && mkdir -p /data /scratch \
    && chown 10001:10001 /data /scratch
COPY --from=build /usr/local/bin/file-system /usr/local/bin/file-system
USER 10001:10001
ENV FS_LISTEN=0.0.0.0:9500 \
    FS_DATA_DIR=/data \
    FS_LOCAL_DIR=/data/objects \
    FS_SCRATCH_DIR=/scratch \
    FS_LOG_FORMAT=json
VOLUME ["/data", "/scratch"]
EXPOSE 9500
# No HEALTHCHECK: Kubernetes ignores it and probes /health and /ready itself (the helm chart's
# startup, liveness and readiness probes), and the image holds no HTTP client to run one
# (no curl or wget; the README shows a bash /dev/tcp check for plain docker).
ENTRYPOINT ["/usr/local/bin/file-system"]
CMD ["serve"]
