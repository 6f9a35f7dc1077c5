# shellcheck shell=bash
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

# What the web console's browser tests need (tests/api/console.rs runs tests/browser/*.mjs):
# Debian's Chromium (playwright-core drives /usr/bin/chromium; `npx playwright install` cannot
# download a browser here) and Node.js, then `npm ci` in tests/browser when node_modules is
# missing or was installed from another package-lock.json.
ensure_browser() {
    local missing=()
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    if ((${#missing[@]})); then
        echo "installing: ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    local dir lock stamp
    dir="$(dirname "${BASH_SOURCE[0]}")/../tests/browser"
    lock=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
    stamp="$dir/node_modules/.fs-package-lock.sha256"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$lock" ]; then
        echo "installing tests/browser's npm packages (npm ci)" >&2
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        echo "$lock" >"$stamp"
    fi
}

FS_TOOLS="${FS_TOOLS:-$HOME/.cache/fs-tools}"
GARAGE_VERSION=2.5.0

# Puts a garage binary on PATH, building it once (about 10 minutes) into $FS_TOOLS.
ensure_garage() {
    export PATH="$FS_TOOLS/bin:$PATH"
    if ! garage --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
        echo "installing garage $GARAGE_VERSION into $FS_TOOLS (one time, ~10 min)" >&2
        # Only what the tests use: the S3 API on SQLite metadata (no LMDB, K2V or metrics: less
        # to compile on a fresh machine).
        cargo install garage --version "$GARAGE_VERSION" --locked --root "$FS_TOOLS" --quiet \
            --no-default-features --features bundled-libs,sqlite
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
    # An if, not `[ ... ] && ...`: a caller's EXIT trap under `set -e` would exit 1 on it.
    if [ -n "${GARAGE_DIR:-}" ]; then
        rm -rf "$GARAGE_DIR"
    fi
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

# Puts Ceph's monitor, OSD and RADOS Gateway on PATH, installing Debian's packages when
# missing (about a minute, ~250 MB).
ensure_ceph() {
    local missing=()
    command -v ceph-mon >/dev/null || missing+=(ceph-mon)
    command -v ceph-osd >/dev/null || missing+=(ceph-osd)
    command -v radosgw >/dev/null || missing+=(radosgw)
    command -v radosgw-admin >/dev/null || missing+=(radosgw)
    if ((${#missing[@]})); then
        echo "installing: ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Starts a throw-away single-node Ceph cluster on loopback: one monitor, one OSD keeping its
# objects in memory (memstore), pools of size 1, and the RADOS Gateway (beast) with a user and
# the storage classes STANDARD and STANDARD_IA.
# No manager: the gateway does not need one. Exports FS_TEST_RGW_ENDPOINT, FS_TEST_RGW_REGION,
# FS_TEST_RGW_ACCESS_KEY_ID, FS_TEST_RGW_SECRET_ACCESS_KEY. The user gets the keys in
# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY when they are set (Garage's, so one test process
# reaches both stores with the same credentials), else new ones, exported there too.
start_rgw() {
    ensure_ceph
    local dir started
    started=$(date +%s)
    dir=$(mktemp -d "${TMPDIR:-/tmp}/fs-rgw.XXXXXX")
    RGW_DIR=$dir
    RGW_PIDS=()
    local mon_port rgw_port fsid conf="$dir/ceph.conf"
    mon_port=$(free_port); rgw_port=$(free_port)
    fsid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    mkdir -p "$dir/mon" "$dir/osd" "$dir/run" "$dir/log"
    cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$mon_port
ms bind msgr2 = false
public addr = 127.0.0.1
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $dir/\$name.keyring
run dir = $dir/run
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
pid file = $dir/run/\$name.pid
crash dir = $dir/crash
mon data = $dir/mon/\$id
osd data = $dir/osd/\$id
osd objectstore = memstore
memstore device bytes = 8589934592
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail crit = 1
mon data avail warn = 2
osd op num shards = 1
osd op num threads per shard = 2
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw dns name = localhost
# Deleted objects' data is collected within a minute (memstore holds it in memory).
rgw gc obj min wait = 60
rgw gc processor period = 60
CONF
    local c=(-c "$conf")
    ceph-authtool --create-keyring "$dir/mon..keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$dir/client.admin.keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
    ceph-authtool "$dir/mon..keyring" --import-keyring "$dir/client.admin.keyring" >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "v1:127.0.0.1:$mon_port" "$dir/monmap" >/dev/null
    ceph-mon "${c[@]}" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon..keyring" ||
        { echo "ceph-mon --mkfs failed" >&2; return 1; }
    ceph-mon "${c[@]}" -f -i a >>"$dir/log/mon.out" 2>&1 &
    RGW_PIDS+=($!)
    # The OSD: registered with the monitor, its key written where the conf says.
    local osd_uuid osd_key osd_id
    osd_uuid=$(python3 -c 'import uuid; print(uuid.uuid4())')
    osd_key=$(ceph-authtool --gen-print-key)
    osd_id=$(echo "{\"cephx_secret\": \"$osd_key\"}" |
        timeout 60 ceph "${c[@]}" osd new "$osd_uuid" -i -) ||
        { echo "the monitor did not answer" >&2; tail -n 20 "$dir/log/mon.a.log" >&2; return 1; }
    ceph-authtool --create-keyring "$dir/osd.$osd_id.keyring" -n "osd.$osd_id" --add-key "$osd_key" >/dev/null
    mkdir -p "$dir/osd/$osd_id"
    ceph-osd "${c[@]}" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" >>"$dir/log/osd.out" 2>&1 ||
        { echo "ceph-osd --mkfs failed" >&2; cat "$dir/log/osd.out" >&2; return 1; }
    ceph-osd "${c[@]}" -f -i "$osd_id" >>"$dir/log/osd.out" 2>&1 &
    RGW_PIDS+=($!)
    # The gateway's user and keys (radosgw-admin talks to RADOS directly).
    local key_id secret
    key_id=${AWS_ACCESS_KEY_ID:-RGW$(python3 -c 'import secrets; print(secrets.token_hex(10).upper())')}
    secret=${AWS_SECRET_ACCESS_KEY:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}
    timeout 120 radosgw-admin "${c[@]}" user create --uid=fs-test --display-name=fs-test \
        --access-key="$key_id" --secret-key="$secret" >"$dir/log/user.out" 2>&1 ||
        { echo "radosgw-admin user create failed" >&2; cat "$dir/log/user.out" >&2; return 1; }
    # A second storage class besides STANDARD, for tiers (RGW refuses classes it does not
    # know: 400 InvalidArgument).
    radosgw-admin "${c[@]}" zonegroup placement add --rgw-zonegroup=default \
        --placement-id=default-placement --storage-class=STANDARD_IA >>"$dir/log/user.out" 2>&1 &&
        radosgw-admin "${c[@]}" zone placement add --rgw-zone=default \
            --placement-id=default-placement --storage-class=STANDARD_IA \
            --data-pool=default.rgw.standard-ia.data >>"$dir/log/user.out" 2>&1 ||
        { echo "radosgw-admin placement add failed" >&2; tail -n 20 "$dir/log/user.out" >&2; return 1; }
    ceph "${c[@]}" auth get-or-create client.rgw.a mon 'allow rw' osd 'allow rwx' \
        -o "$dir/client.rgw.a.keyring" 2>/dev/null
    radosgw "${c[@]}" -f -n client.rgw.a >>"$dir/log/rgw.out" 2>&1 &
    RGW_PIDS+=($!)
    local endpoint="http://127.0.0.1:$rgw_port"
    for _ in $(seq 1 300); do
        curl -sf -o /dev/null "$endpoint" && break
        # Gone already: no point waiting.
        kill -0 "${RGW_PIDS[-1]}" 2>/dev/null || break
        sleep 0.2
    done
    if ! curl -sf -o /dev/null "$endpoint"; then
        tail -n 30 "$dir/log/client.rgw.a.log" >&2
        echo "radosgw did not start" >&2
        return 1
    fi
    export FS_TEST_RGW_ENDPOINT=$endpoint
    export FS_TEST_RGW_REGION=us-east-1
    export FS_TEST_RGW_ACCESS_KEY_ID=$key_id
    export FS_TEST_RGW_SECRET_ACCESS_KEY=$secret
    export AWS_ACCESS_KEY_ID=$key_id
    export AWS_SECRET_ACCESS_KEY=$secret
    echo "ceph $(ceph-mon --version | awk '{print $3}') radosgw on $endpoint (data in $dir, $(($(date +%s) - started)) s)" >&2
}

stop_rgw() {
    local pid
    for pid in "${RGW_PIDS[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    for pid in "${RGW_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    RGW_PIDS=()
    if [ -n "${RGW_DIR:-}" ]; then
        rm -rf "$RGW_DIR"
    fi
    RGW_DIR=
}
