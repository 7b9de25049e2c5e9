#!/usr/bin/env bash
# Start the factory as a service: dagster-webserver and dagster-daemon on a PostgreSQL Dagster instance,
# the ledger on PostgreSQL too.  One command:
#
#   DAGSTER_POSTGRES_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/dagster \
#   FACTORY_DATABASE_URL=postgresql+psycopg2://postgres@127.0.0.1:5432/factory \
#   FACTORY_HOME=/srv/factory  deploy/serve.sh
#
# It installs deploy/dagster.yaml as $DAGSTER_HOME/dagster.yaml (default $FACTORY_HOME/dagster_home),
# migrates the ledger (`factory db upgrade`), then runs the webserver (port $DAGSTER_PORT, default
# 3000) and the daemon (sensors, schedules, run queue, run retries) until either exits or you press
# Ctrl-C; both are stopped together.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
bin="${FACTORY_BIN:-$repo/.venv/bin}"
: "${DAGSTER_POSTGRES_URL:?set DAGSTER_POSTGRES_URL=postgresql+psycopg2://USER[:PASS]@HOST:5432/DB (the Dagster instance)}"
: "${FACTORY_DATABASE_URL:?set FACTORY_DATABASE_URL=postgresql+psycopg2://USER[:PASS]@HOST:5432/DB (the ledger)}"
case "$DAGSTER_POSTGRES_URL$FACTORY_DATABASE_URL" in
  *postgresql://*) echo "serve.sh: use postgresql+psycopg2:// (a bare postgresql:// selects psycopg 3 and fails)" >&2; exit 2;;
esac
export FACTORY_HOME="${FACTORY_HOME:-$PWD}"
export DAGSTER_HOME="${DAGSTER_HOME:-$FACTORY_HOME/dagster_home}"
mkdir -p "$DAGSTER_HOME" "$FACTORY_HOME/datasets" "$FACTORY_HOME/inbox"
cp "$here/dagster.yaml" "$DAGSTER_HOME/dagster.yaml"
for d in "$FACTORY_HOME"/datasets/*.yaml; do
  [ -e "$d" ] && mkdir -p "$FACTORY_HOME/inbox/$(basename "$d" .yaml)"
done

"$bin/factory" db upgrade
# after upgrading Dagster itself run `dagster instance migrate` once (a fresh instance creates its tables);
# an asset that writes a shared DuckDB file declares pool="duckdb": `dagster instance concurrency set duckdb 1`

cd "$repo"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
"$bin/dagster-daemon" run -w "$repo/workspace.yaml" & pids+=($!)
"$bin/dagster-webserver" -w "$repo/workspace.yaml" -h "${DAGSTER_HOST:-0.0.0.0}" -p "${DAGSTER_PORT:-3000}" & pids+=($!)
echo "factory: webserver on http://${DAGSTER_HOST:-0.0.0.0}:${DAGSTER_PORT:-3000}, daemon running; inbox: $FACTORY_HOME/inbox/<dataset>/"
wait -n "${pids[@]}"
