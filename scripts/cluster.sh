#!/usr/bin/env bash
# A throwaway PostgreSQL cluster owned by the `postgres` OS user (Postgres
# refuses to run as root), listening only on a Unix socket inside its own
# directory, so it never collides with another cluster on the machine.
#
#   cluster.sh start DIR PORT [name=value ...]   initdb (if needed) and start
#   cluster.sh stop DIR                          fast shutdown
#   cluster.sh destroy DIR                       stop and remove DIR
#   cluster.sh url DIR PORT [DB]                 print a libpq connection string
#
# Settings given as name=value go into postgresql.conf, e.g.
#   cluster.sh start /tmp/seg 55432 shared_preload_libraries=segments
set -euo pipefail

# The major is the one $PG_CONFIG names (Debian's 15 by default).
PGBIN="$("${PG_CONFIG:-/usr/bin/pg_config}" --bindir)"
cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || { sed -n '2,13p' "$0"; exit 2; }

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then sudo -u postgres -- "$@"; else "$@"; fi
}

case "$cmd" in
  start)
    port="${3:?port}"; shift 3
    if [ ! -f "$dir/PG_VERSION" ]; then
      mkdir -p "$dir"
      [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
      chmod 700 "$dir"
      as_owner "$PGBIN/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir.initdb.log" 2>&1 \
        || { cat "$dir.initdb.log"; exit 1; }
      {
        echo "port = $port"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$dir'"
        echo "fsync = off"
        echo "log_min_messages = log"
        for setting in "$@"; do echo "${setting%%=*} = '${setting#*=}'"; done
      } | as_owner tee -a "$dir/postgresql.conf" >/dev/null
    fi
    as_owner "$PGBIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null \
      || { tail -n 30 "$dir/server.log"; exit 1; }
    ;;
  stop)
    [ -f "$dir/postmaster.pid" ] && as_owner "$PGBIN/pg_ctl" -D "$dir" -m fast -w -t 60 stop >/dev/null || true
    ;;
  destroy)
    "$0" stop "$dir"
    rm -rf "$dir" "$dir.initdb.log"
    ;;
  url)
    echo "host=$dir port=${3:?port} user=postgres dbname=${4:-postgres}"
    ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
