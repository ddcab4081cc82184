#!/usr/bin/env bash
# The benchmark suite in one command: builds segments with the release
# profile, starts a cluster for it, loads the sample data and compares
# segments with hand-written SQL case by case, writing BENCHMARKS.md.
#
#   bash bench/run.sh              # 1M customers, 5M orders, 5M email events
#   bash bench/run.sh --scale 10000000 --runs 3
#   bash bench/run.sh --capture wal     # live segments with WAL capture,
#                                       # written to bench/wal-capture.md
set -euo pipefail
cd "$(dirname "$0")/.."
scale=1000000; runs=5; capture=trigger
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    --capture) capture="$2"; shift 2 ;;
    *) echo "usage: bench/run.sh [--scale N] [--runs N] [--capture trigger|wal]" >&2; exit 2 ;;
  esac
done
out=BENCHMARKS.md
capture_settings=()
if [ "$capture" = wal ]; then
  out=bench/wal-capture.md
  capture_settings=(wal_level=logical segments.capture=wal)
fi
dir="${SEGMENTS_BENCH_DIR:-/tmp/segments-bench}"
port=55435
url="host=$dir port=$port user=postgres dbname=postgres"

bash scripts/setup.sh
install_flags=()
[ "$(id -u)" -eq 0 ] || install_flags=(--sudo)
echo "== building segments (release profile, fat LTO)"
cargo pgrx install --release --pg-config /usr/bin/pg_config "${install_flags[@]}" >/dev/null
cargo build --example bench --features integration --quiet

bash scripts/cluster.sh destroy "$dir"
# The worker is preloaded for the live-latency case, asleep (naptime 1 h)
# until that case wakes it.
bash scripts/cluster.sh start "$dir" "$port" shared_buffers=4GB work_mem=256MB maintenance_work_mem=1GB \
  max_wal_size=8GB checkpoint_timeout=30min synchronous_commit=off \
  shared_preload_libraries=segments segments.naptime=3600 "${capture_settings[@]}"
# SEGMENTS_BENCH_SESSIONS=N loads N shopping sessions per customer (default
# 6, ~9.6 product events per customer; 1 gives ~1.6, which keeps 10M
# customers within this machine's disk);
# SEGMENTS_BENCH_KEEP=1 leaves the cluster running (to look into a case);
# SEGMENTS_BENCH_ONLY=14 runs only the generated list, SEGMENTS_BENCH_SEGMENTS=N
# makes it N segments long.
[ -n "${SEGMENTS_BENCH_KEEP:-}" ] || trap 'bash scripts/cluster.sh destroy "$dir"' EXIT

sessions="${SEGMENTS_BENCH_SESSIONS:-6}"
echo "== loading $scale customers, $((5 * scale)) orders, $((5 * scale)) email events, ~$((16 * sessions * scale / 10)) product events"
time psql "$url" -qX -v scale="$scale" -v anchor=2026-11-01 -v sessions="$sessions" -f scripts/sample_data.sql
psql "$url" -qX -c "VACUUM ANALYZE"

echo "== running the cases"
target/debug/examples/bench "$url" "$scale" "$runs" "$out"
echo "== wrote $out"

# Where Citus is installed: the same segments distributed vs local.
if [ "$capture" = trigger ] && bash scripts/citus.sh installed; then
  echo "== Citus: distributed vs local"
  bash bench/citus.sh --scale "$scale" --out BENCHMARKS.md
fi
