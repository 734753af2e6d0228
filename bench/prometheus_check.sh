#!/usr/bin/env bash
# A real Prometheus server (Debian's `prometheus` package) scrapes corrigo on loopback; the
# script then asks Prometheus' HTTP API for one corrigo_* and one vllm:* series and fails
# unless both have samples. Run from the repository root, under the heavy-job lock:
#
#   flock /tmp/corrigo-heavy.lock bash bench/prometheus_check.sh
#
# Installs the package with apt-get when `prometheus` is missing (needs root). Everything runs
# on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${CORRIGO_VENV:-.venv}/bin/python

if ! command -v prometheus >/dev/null; then
  apt-get install -y --no-install-recommends prometheus >/dev/null
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
corrigo_port=$(free_port)
prom_port=$(free_port)

cat > "$work/corrigo.toml" <<TOML
[engine]
enforce_eager = true
max_model_len = 2048
TOML
"$py" -m server.cli serve --config "$work/corrigo.toml" --port "$corrigo_port" --log-level warning \
  > "$work/corrigo.log" 2>&1 &
pids+=($!)
echo "corrigo on 127.0.0.1:$corrigo_port; waiting for /ready"
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$corrigo_port/ready" >/dev/null && break
  sleep 1
done
curl -sf "http://127.0.0.1:$corrigo_port/ready" >/dev/null || { tail -20 "$work/corrigo.log"; exit 1; }
for i in 1 2 3; do
  curl -sf "http://127.0.0.1:$corrigo_port/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"Say hi."}],"max_tokens":8}' >/dev/null
done

cat > "$work/prometheus.yml" <<YAML
global:
  scrape_interval: 2s
scrape_configs:
  - job_name: corrigo
    metrics_path: /metrics
    static_configs:
      - targets: ["127.0.0.1:$corrigo_port"]
YAML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
  --web.listen-address="127.0.0.1:$prom_port" > "$work/prometheus.log" 2>&1 &
pids+=($!)
echo "$(prometheus --version 2>&1 | head -1) on 127.0.0.1:$prom_port; waiting for scrapes"
sleep 10

query() {
  curl -sf "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1"
}
status=0
echo "vllm:* series Prometheus holds: $(curl -sf "http://127.0.0.1:$prom_port/api/v1/label/__name__/values" | "$py" -c 'import json,sys; print(" ".join(n for n in json.load(sys.stdin)["data"] if n.startswith("vllm:"))[:400])')"
for q in 'sum(corrigo_requests_total{status="200"})' 'sum({__name__="vllm:generation_tokens_total"})' \
         'up{job="corrigo"}'; do
  answer=$(query "$q")
  value=$("$py" -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "NO DATA")' <<<"$answer")
  echo "$q = $value"
  [ "$value" = "NO DATA" ] && status=1
done
exit $status
