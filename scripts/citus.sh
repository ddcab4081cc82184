#!/usr/bin/env bash
# A throwaway three-node Citus cluster (a coordinator and two workers) for
# segments' Citus tests and benchmark, built from nodes made by cluster.sh
# (owned by `postgres`, Unix sockets only, in their own directories).
#
#   citus.sh build [SOURCE]     build and install Citus 13.2.2 for /usr/bin/pg_config
#                               SOURCE: a source tree, or a git directory holding
#                               tag v13.2.2 (default: $CITUS_SOURCE, then
#                               /work/.mirror/citusdata+citus/repo); does nothing
#                               when Citus 13.2.2 is installed already
#   citus.sh installed          exit 0 when Citus is installed for this PostgreSQL
#   citus.sh start DIR PORT     coordinator on PORT, workers on PORT+1 and PORT+2
#   citus.sh stop DIR | destroy DIR
#
# The order that works (and the one README documents): CREATE EXTENSION
# citus on every node, add the workers, then CREATE EXTENSION segments on
# the coordinator (Citus propagates it to the workers).
set -euo pipefail
cd "$(dirname "$0")/.."

PG_CONFIG=/usr/bin/pg_config
VERSION=13.2.2
cmd="${1:-}"
[ -n "$cmd" ] || { sed -n '2,17p' "$0"; exit 2; }

installed() {
  [ -f "$($PG_CONFIG --pkglibdir)/citus.so" ] && [ -f "$($PG_CONFIG --sharedir)/extension/citus.control" ]
}

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then sudo -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  installed)
    installed
    ;;
  build)
    if installed && grep -q "default_version = '13.2" "$($PG_CONFIG --sharedir)/extension/citus.control"; then
      echo "citus $VERSION is installed"
      exit 0
    fi
    source="${2:-${CITUS_SOURCE:-/work/.mirror/citusdata+citus/repo}}"
    build="$(mktemp -d /tmp/citus-build.XXXXXX)"
    if [ -f "$source/configure" ]; then
      cp -a "$source/." "$build/"
    elif git --git-dir="$source" rev-parse -q --verify "v$VERSION^{commit}" >/dev/null 2>&1; then
      git --git-dir="$source" archive "v$VERSION" | tar -x -C "$build"
    else
      echo "citus.sh: no Citus source at $source (a source tree, or a git directory with tag v$VERSION)" >&2
      exit 1
    fi
    # PostgreSQL 15.20's commands/dbcommands.h exports have_createdb_privilege;
    # Citus 13.2.2 still defines its own copy for PostgreSQL 15.
    python3 - "$build/src/include/pg_version_compat.h" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
pattern = re.compile(r"static inline bool\nhave_createdb_privilege\(void\)\n\{.*?\n\}\n", re.S)
if "#if 0 /* segments: have_createdb_privilege */" not in text:
    text, n = pattern.subn(lambda m: "#if 0 /* segments: have_createdb_privilege */\n" + m.group(0) + "#endif\n", text, count=1)
    if n != 1:
        sys.exit("citus.sh: have_createdb_privilege not found in pg_version_compat.h")
    open(path, "w").write(text)
EOF
    # PostgreSQL 15 from Debian is built with lz4, zstd and GSSAPI, so
    # Citus needs their headers.
    if [ ! -f /usr/include/zstd.h ] || [ ! -f /usr/include/lz4.h ] || [ ! -f /usr/include/gssapi/gssapi.h ]; then
      apt-get install -y -q libzstd-dev liblz4-dev libkrb5-dev >/dev/null
    fi
    flags=(--without-libcurl)
    (cd "$build" && PG_CONFIG=$PG_CONFIG ./configure "${flags[@]}" >configure.log && make -j"$(nproc)" >make.log && make install >install.log) \
      || { tail -n 40 "$build"/*.log; exit 1; }
    rm -rf "$build"
    echo "citus $VERSION installed"
    ;;
  start)
    dir="${2:?dir}"; port="${3:?port}"
    installed || { echo "citus.sh: Citus is not installed (citus.sh build)" >&2; exit 1; }
    for i in 0 1 2; do
      node="$dir/node$i"
      bash scripts/cluster.sh start "$node" $((port + i)) \
        shared_preload_libraries=citus,segments,pg_stat_statements segments.naptime=3600 max_connections=200 \
        citus.shard_count=32 wal_level=logical max_worker_processes=16
    done
    [ "$(id -u)" -eq 0 ] && chmod 755 "$dir"
    url() { echo "host=$dir/node$1 port=$((port + $1)) user=postgres dbname=postgres"; }
    for i in 0 1 2; do
      psql "$(url $i)" -qX -c "CREATE EXTENSION IF NOT EXISTS citus" >/dev/null
    done
    if [ "$(psql "$(url 0)" -qtAX -c "SELECT count(*) FROM pg_dist_node")" = "0" ]; then
      psql "$(url 0)" -qX -v ON_ERROR_STOP=1 \
        -c "SELECT citus_set_coordinator_host('$dir/node0', $port)" \
        -c "SELECT citus_add_node('$dir/node1', $((port + 1)))" \
        -c "SELECT citus_add_node('$dir/node2', $((port + 2)))" >/dev/null
    fi
    echo "coordinator: $(url 0)"
    ;;
  stop|destroy)
    dir="${2:?dir}"
    for i in 0 1 2; do
      bash scripts/cluster.sh "$cmd" "$dir/node$i" >/dev/null 2>&1 || true
    done
    [ "$cmd" = destroy ] && rm -rf "$dir"
    ;;
  *)
    sed -n '2,17p' "$0"; exit 2 ;;
esac
