# Container image of file-system: `docker build -t file-system .`
# Runs as uid 10001 on a read-only root file system; writable paths are volumes (/scratch,
# /tmp, and /data for the single-node SQLite + local-directory default).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY entity entity
COPY migration migration
COPY src src
COPY benches benches
# No .git in the build context: pass the revision for `--version`
# (docker build --build-arg FS_GIT_REVISION=$(git rev-parse --short=12 HEAD) .).
ARG FS_GIT_REVISION=unknown
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin file-system \
    && cp target/release/file-system /usr/local/bin/file-system

FROM debian:bookworm-slim
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
ENTRYPOINT ["/usr/local/bin/file-system"]
CMD ["serve"]
