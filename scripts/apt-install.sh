# Sourced by the gate's scripts: `apt_install WHO PACKAGE...` installs Debian packages as
# root or through sudo (after `apt-get update`), and fails loudly, naming WHO, when neither
# is possible.
apt_install() {
    local who=$1
    shift
    local sudo_cmd=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo_cmd=(sudo)
        else
            echo "$who: need $* and we are not root (no sudo): install them" >&2
            exit 1
        fi
    fi
    "${sudo_cmd[@]}" apt-get update
    "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}
