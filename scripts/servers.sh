#!/usr/bin/env bash
# The extra test servers of tests/scaling: a PostgreSQL streaming replica of the primary
# and a PgBouncer in transaction mode in front of the primary, both from Debian packages.
#
#   scripts/servers.sh start    install what is missing, start both (a no-op when healthy)
#   scripts/servers.sh status   one line per server; exit 1 if one is not healthy
#   scripts/servers.sh stop     stop both (the replica cluster is kept)
#   scripts/servers.sh drop     stop both and remove the replica cluster and PgBouncer's files
#
# Needs the primary (the cluster on 127.0.0.1:5432) to be up, and root or the postgres
# user. Idempotent: a replica that already streams and a PgBouncer that already answers
# with the same configuration are left alone; a replica that exists but does not stream
# is recreated from a fresh base backup. See docs/scaling.md.
set -euo pipefail

PRIMARY_PORT="${FUS_PRIMARY_PORT:-5432}"
REPLICA_NAME="${FUS_REPLICA_CLUSTER:-replica}"
REPLICA_PORT="${FUS_REPLICA_PORT:-5433}"
PGBOUNCER_PORT="${FUS_PGBOUNCER_PORT:-6432}"
PGBOUNCER_POOL_SIZE="${FUS_PGBOUNCER_POOL_SIZE:-2}"
PGBOUNCER_DIR="${FUS_PGBOUNCER_DIR:-/var/lib/postgresql/fus-pgbouncer}"
REPLICATION_USER=fus_replicator
HBA_MARK="# flask-unified-session: streaming replica on 127.0.0.1 (scripts/servers.sh)"

say() { echo "servers.sh: $*"; }
die() {
  echo "servers.sh: error: $*" >&2
  exit 1
}

# Run a command as the postgres user (the owner of the clusters; PgBouncer refuses root).
as_pg() {
  if [ "$(id -un)" = postgres ]; then
    "$@"
  elif [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    die "run as root or as the postgres user"
  fi
}

# One value from a server, through its Unix socket as postgres; empty if it does not answer.
pg_value() {
  local port=$1 sql=$2
  as_pg psql -X -A -t -q -p "$port" -d postgres -c "$sql" 2>/dev/null || true
}

pg_ctl_cluster() { pg_ctlcluster --skip-systemctl-redirect "$@"; }

# "15 main" for the cluster that listens on the primary's port.
primary_cluster() {
  pg_lsclusters -h | awk -v p="$PRIMARY_PORT" '$3 == p { print $1, $2; exit }'
}

setup_paths() {
  local primary
  primary="$(primary_cluster)"
  [ -n "$primary" ] || die "no PostgreSQL cluster on port $PRIMARY_PORT (pg_lsclusters)"
  PG_VERSION="${primary% *}"
  PRIMARY_NAME="${primary#* }"
  PRIMARY_CONF="/etc/postgresql/$PG_VERSION/$PRIMARY_NAME"
  REPLICA_CONF="/etc/postgresql/$PG_VERSION/$REPLICA_NAME"
  REPLICA_DATA="/var/lib/postgresql/$PG_VERSION/$REPLICA_NAME"
}

replica_exists() { [ -f "$REPLICA_CONF/postgresql.conf" ]; }

replica_streaming() {
  [ "$(pg_value "$REPLICA_PORT" 'SELECT pg_is_in_recovery()')" = t ] &&
    [ "$(pg_value "$REPLICA_PORT" 'SELECT status FROM pg_stat_wal_receiver')" = streaming ]
}

replica_online() {
  pg_lsclusters -h | awk -v v="$PG_VERSION" -v n="$REPLICA_NAME" '$1 == v && $2 == n { print $4 }' | grep -q online
}

# Wait for the replica to stream; give up early if it answers but is not in recovery.
wait_streaming() {
  local seconds=$1 i
  for ((i = 0; i < seconds * 4; i++)); do
    replica_streaming && return 0
    [ "$(pg_value "$REPLICA_PORT" 'SELECT pg_is_in_recovery()')" != f ] || return 1
    sleep 0.25
  done
  return 1
}

# The primary accepts replication connections from 127.0.0.1 without a password, and has
# a replication user. pg_hba.conf is first-match: the line goes before every other line.
prepare_primary() {
  local hba="$PRIMARY_CONF/pg_hba.conf"
  if ! grep -qF "$HBA_MARK" "$hba"; then
    say "primary: allowing replication from 127.0.0.1 in $hba"
    local tmp
    tmp="$(mktemp)"
    {
      echo "$HBA_MARK"
      echo "host    replication     all             127.0.0.1/32            trust"
      cat "$hba"
    } >"$tmp"
    cat "$tmp" >"$hba" # keep the file's owner and mode
    rm -f "$tmp"
    [ "$(pg_value "$PRIMARY_PORT" 'SELECT pg_reload_conf()')" = t ] ||
      die "primary: pg_reload_conf() failed"
  fi
  if [ "$(pg_value "$PRIMARY_PORT" "SELECT 1 FROM pg_roles WHERE rolname = '$REPLICATION_USER'")" != 1 ]; then
    as_pg psql -X -q -p "$PRIMARY_PORT" -d postgres -c "CREATE ROLE $REPLICATION_USER WITH LOGIN REPLICATION" >/dev/null
  fi
}

create_replica() {
  say "replica: creating cluster $PG_VERSION/$REPLICA_NAME on port $REPLICA_PORT"
  pg_createcluster "$PG_VERSION" "$REPLICA_NAME" -p "$REPLICA_PORT" >/dev/null
  # Debian keeps the configuration in /etc, so the base backup does not bring it: the
  # replica authenticates like the primary, and serves queries while it replays.
  cp "$PRIMARY_CONF/pg_hba.conf" "$REPLICA_CONF/pg_hba.conf"
  chown postgres:postgres "$REPLICA_CONF/pg_hba.conf"
  cat >"$REPLICA_CONF/conf.d/fus-replica.conf" <<'EOF'
# flask-unified-session test replica (scripts/servers.sh)
hot_standby = on
hot_standby_feedback = on
listen_addresses = '127.0.0.1'
EOF
  chown postgres:postgres "$REPLICA_CONF/conf.d/fus-replica.conf"
  # An empty directory of its own: the parent may belong to root.
  rm -rf "$REPLICA_DATA"
  install -d -o postgres -g postgres -m 700 "$REPLICA_DATA"
  say "replica: pg_basebackup from 127.0.0.1:$PRIMARY_PORT"
  as_pg pg_basebackup -h 127.0.0.1 -p "$PRIMARY_PORT" -U "$REPLICATION_USER" \
    -D "$REPLICA_DATA" -R -X stream --checkpoint=fast
  chown -R postgres:postgres "$REPLICA_DATA"
  chmod 700 "$REPLICA_DATA"
  pg_ctl_cluster "$PG_VERSION" "$REPLICA_NAME" start
}

drop_replica() {
  if replica_exists; then
    say "replica: dropping cluster $PG_VERSION/$REPLICA_NAME"
    pg_dropcluster --stop "$PG_VERSION" "$REPLICA_NAME" ||
      { pg_ctl_cluster "$PG_VERSION" "$REPLICA_NAME" stop -m immediate || true; pg_dropcluster "$PG_VERSION" "$REPLICA_NAME"; }
  fi
  rm -rf "$REPLICA_DATA" "$REPLICA_CONF"
}

# A test that failed half-way may leave an apply delay behind: take it out.
reset_apply_delay() {
  if [ "$(pg_value "$REPLICA_PORT" 'SHOW recovery_min_apply_delay')" != 0 ]; then
    say "replica: resetting recovery_min_apply_delay"
    pg_value "$REPLICA_PORT" 'ALTER SYSTEM RESET recovery_min_apply_delay' >/dev/null
    pg_value "$REPLICA_PORT" 'SELECT pg_reload_conf()' >/dev/null
  fi
}

start_replica() {
  prepare_primary
  if replica_exists; then
    local owner
    owner="$(pg_lsclusters -h | awk -v v="$PG_VERSION" -v n="$REPLICA_NAME" '$1 == v && $2 == n { print $3 }')"
    [ "$owner" = "$REPLICA_PORT" ] ||
      die "cluster $PG_VERSION/$REPLICA_NAME exists on port $owner, not $REPLICA_PORT: drop it or set FUS_REPLICA_CLUSTER"
    if replica_streaming; then
      say "replica: already streaming on 127.0.0.1:$REPLICA_PORT"
      reset_apply_delay
      return
    fi
    # Stopped (a reboot, a test that failed half-way): start it and give it a moment to
    # connect. One that cannot start, or that is no longer in recovery, is recreated.
    if [ -d "$REPLICA_DATA" ] && [ -f "$REPLICA_DATA/standby.signal" ] &&
      { replica_online || pg_ctl_cluster "$PG_VERSION" "$REPLICA_NAME" start >/dev/null 2>&1; } &&
      wait_streaming 10; then
      say "replica: started, streaming on 127.0.0.1:$REPLICA_PORT"
      reset_apply_delay
      return
    fi
    say "replica: exists but does not stream; recreating it"
    drop_replica
  fi
  create_replica
  wait_streaming 30 || die "replica: not streaming after 30 s; see /var/log/postgresql/postgresql-$PG_VERSION-$REPLICA_NAME.log"
  say "replica: streaming on 127.0.0.1:$REPLICA_PORT"
}

stop_replica() {
  if replica_exists; then
    pg_ctl_cluster "$PG_VERSION" "$REPLICA_NAME" stop -m fast 2>/dev/null || true
    say "replica: stopped"
  fi
}

# --- PgBouncer ---------------------------------------------------------------------------

install_pgbouncer() {
  command -v pgbouncer >/dev/null && return
  [ "$(id -u)" = 0 ] || die "pgbouncer is not installed (apt-get install pgbouncer, as root)"
  say "pgbouncer: installing the Debian package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q pgbouncer >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q pgbouncer >/dev/null; }
  command -v pgbouncer >/dev/null || die "pgbouncer: install failed"
}

# "1 18" for "PgBouncer 1.18.0".
pgbouncer_version() {
  pgbouncer --version | awk 'NR == 1 { split($2, v, "."); print v[1], v[2] }'
}

pgbouncer_ini() {
  local major minor
  read -r major minor <<<"$(pgbouncer_version)"
  cat <<EOF
; flask-unified-session test PgBouncer (scripts/servers.sh): transaction pooling in
; front of the primary, the setting that breaks server-side prepared statements.
[databases]
* = host=127.0.0.1 port=$PRIMARY_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = trust
auth_file = $PGBOUNCER_DIR/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = $PGBOUNCER_POOL_SIZE
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 500
max_db_connections = 0
query_wait_timeout = 30
ignore_startup_parameters = extra_float_digits
logfile = $PGBOUNCER_DIR/pgbouncer.log
pidfile = $PGBOUNCER_DIR/pgbouncer.pid
EOF
  # 1.21 and later can track protocol-level prepared statements in transaction mode;
  # 0 keeps that off, so the tests see what transaction pooling does to them (1.18, in
  # Debian 12, has no such setting and rejects the name).
  if ((major > 1 || minor >= 21)); then
    echo "max_prepared_statements = 0"
  fi
}

pgbouncer_pid() {
  local pid
  pid="$(cat "$PGBOUNCER_DIR/pgbouncer.pid" 2>/dev/null || true)"
  # A stale pid file may name another process by now: only a pgbouncer counts.
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = pgbouncer ]; then echo "$pid"; fi
}

pgbouncer_answers() {
  [ "$(as_pg psql -X -A -t -q -h 127.0.0.1 -p "$PGBOUNCER_PORT" -U postgres -d test -c 'SELECT 1' 2>/dev/null)" = 1 ]
}

start_pgbouncer() {
  install_pgbouncer
  mkdir -p "$PGBOUNCER_DIR"
  local new="$PGBOUNCER_DIR/pgbouncer.ini.new" pid
  pgbouncer_ini >"$new"
  echo '"postgres" ""' >"$PGBOUNCER_DIR/userlist.txt"
  chown -R postgres:postgres "$PGBOUNCER_DIR"
  pid="$(pgbouncer_pid)"
  if [ -n "$pid" ] && cmp -s "$new" "$PGBOUNCER_DIR/pgbouncer.ini" && pgbouncer_answers; then
    rm -f "$new"
    say "pgbouncer: already running on 127.0.0.1:$PGBOUNCER_PORT (pid $pid)"
    return
  fi
  [ -z "$pid" ] || stop_pgbouncer
  mv "$new" "$PGBOUNCER_DIR/pgbouncer.ini"
  as_pg pgbouncer -q -d "$PGBOUNCER_DIR/pgbouncer.ini" ||
    die "pgbouncer: did not start; see $PGBOUNCER_DIR/pgbouncer.log (is port $PGBOUNCER_PORT taken?)"
  local i
  for ((i = 0; i < 40; i++)); do
    pgbouncer_answers && break
    sleep 0.25
  done
  pgbouncer_answers || die "pgbouncer: not answering on 127.0.0.1:$PGBOUNCER_PORT; see $PGBOUNCER_DIR/pgbouncer.log"
  say "pgbouncer: running on 127.0.0.1:$PGBOUNCER_PORT (pid $(pgbouncer_pid), pool_mode=transaction, default_pool_size=$PGBOUNCER_POOL_SIZE)"
}

stop_pgbouncer() {
  local pid i
  pid="$(pgbouncer_pid)"
  [ -n "$pid" ] || return 0
  kill -TERM "$pid"
  for ((i = 0; i < 40; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  say "pgbouncer: stopped"
}

# --- commands ----------------------------------------------------------------------------

status() {
  local healthy=0 lag delay pid
  if replica_streaming; then
    lag="$(pg_value "$REPLICA_PORT" "SELECT coalesce(round(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::numeric, 1)::text, '?')")"
    delay="$(pg_value "$REPLICA_PORT" 'SHOW recovery_min_apply_delay')"
    say "replica: streaming on 127.0.0.1:$REPLICA_PORT ($PG_VERSION/$REPLICA_NAME, last replayed commit ${lag}s ago, recovery_min_apply_delay=$delay)"
  elif replica_exists; then
    say "replica: cluster $PG_VERSION/$REPLICA_NAME exists but is not streaming"
    healthy=1
  else
    say "replica: absent"
    healthy=1
  fi
  pid="$(pgbouncer_pid)"
  if [ -n "$pid" ] && pgbouncer_answers; then
    say "pgbouncer: running on 127.0.0.1:$PGBOUNCER_PORT (pid $pid, $(pgbouncer --version | head -n1))"
  else
    say "pgbouncer: not running"
    healthy=1
  fi
  return "$healthy"
}

main() {
  local command="${1:-}"
  case "$command" in
  start | stop | status | drop) ;;
  *)
    echo "usage: $0 start|stop|status|drop" >&2
    exit 2
    ;;
  esac
  setup_paths
  case "$command" in
  start)
    [ "$(pg_value "$PRIMARY_PORT" 'SELECT pg_is_in_recovery()')" = f ] ||
      die "the primary on port $PRIMARY_PORT is not up"
    local started=$SECONDS
    start_replica
    local replica_seconds=$((SECONDS - started))
    start_pgbouncer
    say "ready in $((SECONDS - started)) s (replica $replica_seconds s, pgbouncer $((SECONDS - started - replica_seconds)) s)"
    ;;
  stop)
    stop_pgbouncer
    stop_replica
    ;;
  status) status ;;
  drop)
    stop_pgbouncer
    drop_replica
    rm -rf "$PGBOUNCER_DIR"
    say "dropped"
    ;;
  esac
}

main "$@"
