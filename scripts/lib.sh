# Shared helpers for scripts/test and scripts/bench (sourced, not run).

# Installs the command-line tools the tests drive, from Debian's packages, when missing.
ensure_tools() {
    local missing=()
    command -v qemu-img >/dev/null || missing+=(qemu-utils)
    command -v qemu-io >/dev/null || missing+=(qemu-utils)
    command -v unzip >/dev/null || missing+=(unzip)
    command -v python3 >/dev/null || missing+=(python3)
    # RSA and EC key pairs for the JWT tests (src/auth/jwt.rs, tests/api/auth.rs).
    command -v openssl >/dev/null || missing+=(openssl)
    # Java runs the clients in tests/support as single source files (`java File.java`): a JDK.
    command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
    # A real reverse proxy in front of the service (tests/api/proxy.rs).
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    # The chart tests render the helm chart with Go's text/template and sprig (no helm here).
    command -v go >/dev/null || missing+=(golang-go)
    [ -d /usr/share/gocode/src/github.com/Masterminds/sprig ] || missing+=(golang-github-masterminds-sprig-dev)
    [ -d /usr/share/gocode/src/gopkg.in/yaml.v3 ] || missing+=(golang-gopkg-yaml.v3-dev)
    if ((${#missing[@]})); then
        echo "installing: ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # From PyPI: a validator of the service's OpenAPI document, schemathesis, which sends
    # requests generated from that document...
    local py=()
    python3 -c 'import openapi_spec_validator' 2>/dev/null || py+=('openapi-spec-validator>=0.7,<0.8')
    python3 -c 'import schemathesis' 2>/dev/null || py+=('schemathesis==4.32.5')
    # ... kubernetes-validate, which checks the rendered helm chart against the API schemas,
    # and jsonschema (the reference implementation; kubernetes-validate depends on it too),
    # which checks the chart's values.schema.json and the values of every chart test.
    python3 -c 'import kubernetes_validate' 2>/dev/null || py+=('kubernetes-validate==1.37.0')
    python3 -c 'import jsonschema; jsonschema.Draft7Validator' 2>/dev/null || py+=('jsonschema>=4.18,<5')
    if ((${#py[@]})); then
        echo "installing (PyPI): ${py[*]}" >&2
        python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${py[@]}"
    fi
}

FS_TOOLS="${FS_TOOLS:-$HOME/.cache/fs-tools}"
GARAGE_VERSION=2.5.0

# Puts a garage binary on PATH, building it once (about 10 minutes) into $FS_TOOLS.
ensure_garage() {
    export PATH="$FS_TOOLS/bin:$PATH"
    if ! garage --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
        echo "installing garage $GARAGE_VERSION into $FS_TOOLS (one time, ~10 min)" >&2
        cargo install garage --version "$GARAGE_VERSION" --locked --root "$FS_TOOLS" --quiet
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts a throw-away single-node Garage on loopback and exports the S3 settings for the tests:
# FS_TEST_S3_ENDPOINT, FS_TEST_S3_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
start_garage() {
    ensure_garage
    local dir
    dir=$(mktemp -d "${TMPDIR:-/tmp}/fs-garage.XXXXXX")
    local s3_port rpc_port admin_port
    s3_port=$(free_port); rpc_port=$(free_port); admin_port=$(free_port)
    cat >"$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
TOML
    garage -c "$dir/garage.toml" server >"$dir/garage.log" 2>&1 &
    GARAGE_PID=$!
    GARAGE_DIR=$dir
    local g="garage -c $dir/garage.toml"
    for _ in $(seq 1 100); do
        $g status >/dev/null 2>&1 && break
        sleep 0.2
    done
    if ! $g status >/dev/null 2>&1; then
        cat "$dir/garage.log" >&2
        echo "garage did not start" >&2
        return 1
    fi
    local node
    node=$($g node id -q 2>/dev/null | cut -d@ -f1)
    $g layout assign -z dc1 -c 1G "$node" >/dev/null
    $g layout apply --version 1 >/dev/null
    local key_id secret
    key_id="GK$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
    secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
    $g key import --yes -n fs-test "$key_id" "$secret" >/dev/null
    $g key allow --create-bucket "$key_id" >/dev/null
    export FS_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port"
    export FS_TEST_S3_REGION=garage
    export AWS_ACCESS_KEY_ID=$key_id
    export AWS_SECRET_ACCESS_KEY=$secret
    export FS_TEST_GARAGE_CONFIG="$dir/garage.toml"
    echo "garage $GARAGE_VERSION on $FS_TEST_S3_ENDPOINT (data in $dir)" >&2
}

stop_garage() {
    if [ -n "${GARAGE_PID:-}" ]; then
        kill "$GARAGE_PID" 2>/dev/null || true
        wait "$GARAGE_PID" 2>/dev/null || true
    fi
    [ -n "${GARAGE_DIR:-}" ] && rm -rf "$GARAGE_DIR"
}

# Puts PostgreSQL's server programs on PATH, installing Debian's package when missing.
ensure_postgres() {
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        echo "installing: postgresql" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    fi
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
}

# Starts a throw-away PostgreSQL cluster on loopback (no fsync: its data dies with the run) and
# exports FS_TEST_PG_URL, a URL without a database name; each test creates its own database.
start_postgres() {
    ensure_postgres
    local dir port as=()
    dir=$(mktemp -d "${TMPDIR:-/tmp}/fs-pg.XXXXXX")
    port=$(free_port)
    # The server refuses to run as root: run it as Debian's postgres user then.
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$dir"
        as=(runuser -u postgres --)
    fi
    "${as[@]}" "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; return 1; }
    "${as[@]}" "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400" \
        start >/dev/null || { cat "$dir/server.log" >&2; return 1; }
    PG_DIR=$dir
    PG_AS=("${as[@]}")
    export FS_TEST_PG_URL="postgres://postgres@127.0.0.1:$port"
    echo "postgresql $("$PG_BIN/postgres" --version | awk '{print $3}') on $FS_TEST_PG_URL" >&2
}

stop_postgres() {
    if [ -n "${PG_DIR:-}" ]; then
        "${PG_AS[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
}
