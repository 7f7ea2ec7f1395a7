# Sourced by the hack/ scripts: a project virtualenv with the package and its
# test tools installed, and the control-plane binaries built. Idempotent and
# cheap when everything is already in place.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${WA_VENV:-$ROOT/.venv}
export PATH="$VENV/bin:$PATH"
# devtools/ (control plane, harness, quickstart, benchmark) is not installed: import it
# from the checkout.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Go lives outside the default PATH on some images.
command -v go >/dev/null || export PATH="/usr/local/go/bin:$PATH"

ensure_venv() {
  local stamp="$VENV/.installed"
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV"
  fi
  if [[ ! -f "$stamp" || "$ROOT/pyproject.toml" -nt "$stamp" ]]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"
    touch "$stamp"
  fi
}

ensure_tools() {
  WA_TOOLS_BIN=$("$ROOT/hack/build-tools")
  export WA_TOOLS_BIN
  export PATH="$WA_TOOLS_BIN:$PATH"
}

# PostgreSQL for the mirror's tests, from Debian's packages (the tests start their own
# server on loopback; nothing is configured system-wide).
ensure_postgres() {
  if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      postgresql >/dev/null
  fi
}

# MariaDB for the tests of the MySQL side (the seed's database): Debian's MariaDB server
# binaries (mariadbd, mariadb-install-db and its my_print_defaults), without the
# mariadb-server package's system service: the tests start their own server on loopback,
# and nothing is configured or started system-wide.
ensure_mariadb() {
  _ensure_debian_packages mariadb-server-core mariadb-client-core
}

# Debian's tools that build images without Docker: a root filesystem from Debian's
# packages (debootstrap), OCI layouts (umoci), docker-archives (skopeo), static pause (gcc).
ensure_image_tools() {
  _ensure_debian_packages debootstrap umoci skopeo gcc libc6-dev
}

# The real node's runtime from Debian's packages (hack/cluster): containerd and runc, the
# CNI plugins, iptables and conntrack for kube-proxy. No service is enabled or started.
ensure_node_packages() {
  _ensure_debian_packages containerd runc containernetworking-plugins iptables conntrack \
    iproute2 util-linux
}

# _ensure_debian_packages PACKAGE...: apt-get install those not installed yet.
_ensure_debian_packages() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" \
      || missing+=("$package")
  done
  ((${#missing[@]})) || return 0
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

# The control plane's and the node's binaries (hack/build-tools --node).
ensure_node_tools() {
  WA_TOOLS_BIN=$("$ROOT/hack/build-tools" --node)
  export WA_TOOLS_BIN
  export PATH="$WA_TOOLS_BIN:$PATH"
}
