# Shared helpers for scripts/test and scripts/bench (sourced, not run).

# Installs the command-line tools the tests drive, from Debian's packages, when missing.
ensure_tools() {
    local missing=()
    command -v qemu-img >/dev/null || missing+=(qemu-utils)
    command -v qemu-io >/dev/null || missing+=(qemu-utils)
    command -v unzip >/dev/null || missing+=(unzip)
    command -v python3 >/dev/null || missing+=(python3)
    command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
    if ((${#missing[@]})); then
        echo "installing: ${missing[*]}" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}
