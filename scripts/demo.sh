#!/usr/bin/env bash
# Builds and installs segments, starts a throwaway local cluster with the
# background worker preloaded, loads 100,000 sample customers with a year of
# orders and email events, and runs a short tour (scripts/tour.sql).
#
#   bash scripts/demo.sh            # SEGMENTS_DEMO_DIR, SEGMENTS_DEMO_PORT, SEGMENTS_DEMO_SCALE to change
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${SEGMENTS_DEMO_DIR:-/tmp/segments-demo}"
port="${SEGMENTS_DEMO_PORT:-55432}"
scale="${SEGMENTS_DEMO_SCALE:-100000}"
anchor="$(date +%F)"
url="host=$dir port=$port user=postgres dbname=segments_demo"

bash scripts/setup.sh
echo "== building and installing the extension"
install_flags=()
[ "$(id -u)" -eq 0 ] || install_flags=(--sudo)
cargo pgrx install --pg-config /usr/bin/pg_config "${install_flags[@]}" >/dev/null

echo "== starting the demo cluster in $dir (port $port)"
bash scripts/cluster.sh stop "$dir"   # a running one must load the new build
bash scripts/cluster.sh start "$dir" "$port" shared_preload_libraries=segments segments.database=segments_demo
psql "host=$dir port=$port user=postgres dbname=postgres" -qX \
  -c "DROP DATABASE IF EXISTS segments_demo" -c "CREATE DATABASE segments_demo"

echo "== loading $scale sample customers (orders and email events over the year to $anchor)"
psql "$url" -qX -v scale="$scale" -v anchor="$anchor" -f scripts/sample_data.sql

echo "== the tour"
psql "$url" -X -v ON_ERROR_STOP=1 -v anchor="$anchor" -f scripts/tour.sql

cat <<MSG

The demo cluster is running.
  connect:  psql "$url"
  stop:     bash scripts/cluster.sh stop $dir
  remove:   bash scripts/cluster.sh destroy $dir
MSG
