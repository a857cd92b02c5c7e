#!/usr/bin/env bash
# A real cluster's shape on one machine: a Ray head with the dashboard (jobs API on :8265), an
# S3-compatible store on 127.0.0.1 (moto's server; MinIO or AWS S3 in production), and an MLflow
# tracking server (SQLite backend, artifacts in the S3 bucket).
#
#   cluster/local.sh up|down|status
#
# `up` writes $STATE/env.sh; `source` it to point jobs, `ray job submit` and `mlflow` at the cluster.
# `down` stops exactly the process groups `up` started (by the ids it recorded), nothing else.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${SNE_CLUSTER_DIR:-$ROOT/runs/local-cluster}
PY=${PYTHON:-$ROOT/.venv/bin/python}
BIN=$(dirname "$PY")
S3_PORT=${SNE_S3_PORT:-9100}
MLFLOW_PORT=${SNE_MLFLOW_PORT:-5100}
RAY_PORT=${SNE_RAY_PORT:-6390}
DASHBOARD_PORT=${SNE_DASHBOARD_PORT:-8265}
BUCKET=${SNE_BUCKET:-sne}
NUM_CPUS=${SNE_NUM_CPUS:-2}
PARTS=(s3 mlflow ray)

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # port, name, seconds
  for _ in $(seq 1 $(($3 * 5))); do port_open "$1" && return 0; sleep 0.2; done
  echo "error: $2 did not open port $1 within $3 s (log: $STATE/$2.log)" >&2; return 1
}
alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }
# Each part runs in its own session (setsid), so its pid is also its process-group id and `down`
# can stop the part with every child it spawned (gunicorn workers, raylet, GCS, ...).
launch() {  # name, command...
  local name=$1; shift
  setsid "$@" >"$STATE/$name.log" 2>&1 < /dev/null &
  echo $! >"$STATE/$name.pid"
}

write_env() {
  # The local S3 server accepts any credentials: a fresh random secret per cluster, so a secret that leaks
  # into a log, an MLflow run or a record can be searched for (tests/cluster does).
  local secret
  secret="local-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  cat >"$STATE/env.sh" <<ENV
# Source this file to talk to the local cluster. Its S3 server takes any credentials; these are made up.
export AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=$secret AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export MLFLOW_S3_ENDPOINT_URL=http://127.0.0.1:$S3_PORT
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
# Jobs started with python join the head as drivers (its GCS address); \`ray job submit\` talks to the jobs API.
export RAY_ADDRESS=127.0.0.1:$RAY_PORT
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_AUTH_MODE=disabled
export SNE_BUCKET=$BUCKET
ENV
  chmod 600 "$STATE/env.sh"  # it holds credentials: its owner's to read
}

up() {
  mkdir -p "$STATE"
  for part in "${PARTS[@]}"; do
    if alive "$part"; then echo "error: $part is already running (pid $(cat "$STATE/$part.pid")); run down first" >&2; exit 1; fi
  done
  write_env
  # shellcheck disable=SC1091
  source "$STATE/env.sh"
  unset RAY_ADDRESS RAY_API_SERVER_ADDRESS  # set by env.sh for clients; `ray start --head` must not try to join them
  launch s3 "$PY" -m moto.server -H 127.0.0.1 -p "$S3_PORT"
  wait_port "$S3_PORT" s3 30
  "$PY" - <<PYEOF
import boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:$S3_PORT")
if "$BUCKET" not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket="$BUCKET")
PYEOF
  launch mlflow "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$STATE/mlflow.db" --artifacts-destination "s3://$BUCKET/mlflow"
  # The head inherits this environment (S3 endpoint, MLflow URI, the venv's PATH), so jobs and
  # their workers do too. Auth is off: the cluster listens on 127.0.0.1 only.
  PATH="$BIN:$PATH" RAY_AUTH_MODE=disabled RAY_DATA_PARQUET_FOOTER_NUM_ACTORS=1 launch ray "$BIN/ray" start --head --block \
    --port "$RAY_PORT" --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --num-cpus "$NUM_CPUS" --object-store-memory 1000000000 --disable-usage-stats
  wait_port "$MLFLOW_PORT" mlflow 90
  wait_port "$DASHBOARD_PORT" ray 120
  # The dashboard port opens before the jobs API answers; wait for the API itself.
  for _ in $(seq 1 120); do
    "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$DASHBOARD_PORT/api/version', timeout=2)" 2>/dev/null && break
    sleep 1
  done
  status
  echo "source $STATE/env.sh   # then: ray job submit --working-dir . -- python jobs/train.py --zoo s3://$BUCKET/..."
}

down() {
  local part pid
  for part in ray mlflow s3; do
    [ -f "$STATE/$part.pid" ] || continue
    pid=$(cat "$STATE/$part.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "stopped $part (process group $pid)"
    fi
    rm -f "$STATE/$part.pid"
  done
  # `ray start` records its address for later `ray.init()` calls; forget it when it is ours.
  local record=/tmp/ray/ray_current_cluster
  if [ -f "$record" ] && grep -q ":$RAY_PORT\$" "$record"; then rm -f "$record"; fi
}

status() {
  local rc=0
  for part in "${PARTS[@]}"; do
    case $part in s3) port=$S3_PORT ;; mlflow) port=$MLFLOW_PORT ;; ray) port=$DASHBOARD_PORT ;; esac
    if alive "$part" && port_open "$port"; then
      echo "$part: up (pid $(cat "$STATE/$part.pid"), http://127.0.0.1:$port)"
    elif alive "$part"; then
      echo "$part: starting (pid $(cat "$STATE/$part.pid"), port $port not open yet)"; rc=1
    else
      echo "$part: down"; rc=1
    fi
  done
  return $rc
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
