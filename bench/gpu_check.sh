#!/usr/bin/env bash
# corrigo's Docker image on a CUDA host: does it build, start and stay exact, and what does it
# cost against `vllm serve` with the same model?
#
#   bench/gpu_check.sh MODEL_DIR [RESULTS_DIR]
#
#   MODEL_DIR    a Hugging Face model folder on this host (mounted read-only into the containers)
#   RESULTS_DIR  default: bench/results/gpu-check-<time>/ (summary.md, logs, JSON)
#
# Settings (environment): IMAGE (default corrigo:gpu-check), GPUS (docker --gpus, default all),
# REQUESTS (32), MAX_TOKENS (128), CONCURRENCY ("1 8 32"), CHECK_TESTS (the exactness tests run
# inside the image; add GPU checks of your own here), READY_TIMEOUT (seconds, 1800).
#
# NOT RUN IN CI AND NOT RUN ON THE DEVELOPMENT MACHINES: it needs a CUDA host with Docker, the
# NVIDIA container toolkit (`docker run --gpus`) and network access for the build (the CUDA base
# image, PyPI). The development machines have no GPU and no Docker daemon; there the script is
# only checked with `bash -n` and shellcheck. Whoever runs it first: read the summary and the
# logs, not only the exit status.
#
# Steps (the script stops at the first failure; each is recorded in summary.md):
#   1. build the image from this checkout (Dockerfile)
#   2. VLLM_USE_V2_MODEL_RUNNER=1 is refused at start-up with the reason (exit 2, no engine)
#   3. corrigo serves MODEL_DIR: /ready, a greedy and a sampled (top-k/top-p: vLLM's sampler
#      without FlashInfer) completion, a chat completion, /metrics
#   4. exactness on the GPU: the proxy-tuning and copilot exactness tests, run inside the image
#      against its installed corrigo (tiny models served on the GPU vs a transformers reference)
#   5. with 2 or more GPUs: corrigo serves MODEL_DIR with tensor parallelism 2 (--ipc=host)
#   6. serving benchmark (bench/serving.py's method: same prompts, greedy, ignore_eos, streamed,
#      tokens/s and TTFT per concurrency), one server at a time, all from this image:
#      `vllm serve` on the V1 model runner (as corrigo runs it), `vllm serve` on vLLM's default
#      runner, then corrigo; compared with the first
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -ge 1 ] || { sed -n '2,12p' "$0"; exit 2; }
MODEL=$(cd "$1" && pwd)
[ -f "$MODEL/config.json" ] || { echo "gpu_check: $MODEL has no config.json" >&2; exit 2; }
OUT=${2:-$REPO/bench/results/gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

IMAGE=${IMAGE:-corrigo:gpu-check}
GPUS=${GPUS:-all}
REQUESTS=${REQUESTS:-32}
MAX_TOKENS=${MAX_TOKENS:-128}
CONCURRENCY=${CONCURRENCY:-1 8 32}
CHECK_TESTS=${CHECK_TESTS:-tests/integration/test_proxy_tuning_exact.py tests/integration/test_copilot_exact.py}
READY_TIMEOUT=${READY_TIMEOUT:-1800}
PORT=18000
SERVED=model
SUMMARY=$OUT/summary.md
CONTAINERS=()

cleanup() {
  local name
  for name in "${CONTAINERS[@]}"; do
    docker rm -f "$name" > /dev/null 2>&1 || true
  done
}
trap cleanup EXIT

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME COMMAND...: run, time and record one step; stop the script when it fails.
step() {
  local name=$1 started rc=0
  shift
  echo "== $name" >&2
  started=$(date +%s)
  "$@" || rc=$?
  if [ "$rc" -eq 0 ]; then
    note "- PASS $name ($(($(date +%s) - started)) s)"
  else
    note "- FAIL $name (exit $rc, $(($(date +%s) - started)) s; logs in $OUT)"
    exit 1
  fi
}

# A container of the image that talks to the servers below over the host's loopback, with
# bench/ and the results folder mounted: the clients run with the image's own Python packages.
client() {
  docker run --rm --network host \
    -v "$REPO/bench:/opt/checks/bench:ro" -v "$OUT:/results" -v "$MODEL:/models/$SERVED:ro" \
    -w /opt/checks --entrypoint python "$IMAGE" "$@"
}

# serve NAME [docker run options...] -- ARGS...: start a server container on the next port
# (its URL in $URL), wait for it to be ready.
serve() {
  local name=corrigo-gpu-check-$1 options=()
  shift
  while [ "$1" != "--" ]; do options+=("$1"); shift; done
  shift
  PORT=$((PORT + 1))
  URL=http://127.0.0.1:$PORT
  docker rm -f "$name" > /dev/null 2>&1 || true
  CONTAINERS+=("$name")
  docker run -d --name "$name" --gpus "$GPUS" --ipc=host -p "127.0.0.1:$PORT:8000" \
    -v "$MODEL:/models/$SERVED:ro" "${options[@]}" "$IMAGE" "$@" > /dev/null
  local deadline=$(($(date +%s) + READY_TIMEOUT))
  until curl -sf "$URL/health" > /dev/null && curl -sf "$URL/v1/models" > /dev/null; do
    if [ "$(docker inspect -f '{{.State.Running}}' "$name")" != true ] || [ "$(date +%s)" -gt "$deadline" ]; then
      docker logs "$name" > "$OUT/$name.log" 2>&1 || true
      echo "gpu_check: $name did not become ready; the end of $OUT/$name.log:" >&2
      tail -40 "$OUT/$name.log" >&2
      return 1
    fi
    sleep 5
  done
}

# stop NAME: stop a server container as `docker stop` does (SIGTERM to PID 1), keep its log.
stop() {
  local name=corrigo-gpu-check-$1
  docker stop -t 60 "$name" > /dev/null
  docker logs "$name" > "$OUT/$name.log" 2>&1
  docker rm "$name" > /dev/null
}

corrigo_serve() {
  serve "$1" "${@:2}" -- serve --host 0.0.0.0 --port 8000 --model "/models/$SERVED" --served-model-name "$SERVED"
}

build() {
  docker build -t "$IMAGE" "$REPO" > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log" >&2; return 1; }
  note "  image $(docker image inspect -f '{{.Id}}' "$IMAGE")"
}

v2_runner_refused() {
  local rc=0
  docker run --rm --gpus "$GPUS" -e VLLM_USE_V2_MODEL_RUNNER=1 -v "$MODEL:/models/$SERVED:ro" \
    "$IMAGE" serve --model "/models/$SERVED" > "$OUT/v2-refused.log" 2>&1 || rc=$?
  [ "$rc" -eq 2 ] && grep -q "corrigo needs vLLM's V1 model runner" "$OUT/v2-refused.log"
}

SMOKE='
import json, sys, httpx
from prometheus_client.parser import text_string_to_metric_families
url, model = sys.argv[1], sys.argv[2]
out = {}
def complete(path, **body):
    r = httpx.post(f"{url}{path}", json={"model": model, "max_tokens": 16, **body}, timeout=600)
    assert r.status_code == 200, r.text
    return r.json()
out["greedy"] = complete("/v1/completions", prompt="The capital of France is", temperature=0)
out["sampled"] = complete("/v1/completions", prompt="Once upon a time", temperature=0.8,
                          top_p=0.9, top_k=50, seed=1)
out["chat"] = complete("/v1/chat/completions", messages=[{"role": "user", "content": "Hi"}])
assert httpx.get(f"{url}/ready").status_code == 200
names = {f.name for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)}
assert "corrigo_requests" in names, sorted(names)
out["metrics_families"] = len(names)
json.dump(out, open(sys.argv[3], "w"), indent=2)
print(out["greedy"]["choices"][0]["text"], "|", out["sampled"]["choices"][0]["text"])
'

smoke() {
  corrigo_serve smoke || return 1
  client -c "$SMOKE" "$URL" "$SERVED" /results/smoke.json || return 1
  stop smoke
}

exactness() {
  # Only tests/ and pyproject.toml (pytest's settings) are mounted: the code under test is the
  # corrigo installed in the image, not this checkout.
  local tests
  read -r -a tests <<< "$CHECK_TESTS"
  docker run --rm --gpus "$GPUS" --ipc=host \
    -v "$REPO/tests:/opt/checks/tests:ro" -v "$REPO/pyproject.toml:/opt/checks/pyproject.toml:ro" \
    -v "$OUT:/results" -w /opt/checks --entrypoint bash "$IMAGE" -c '
      pip install -q "pytest>=8" "pytest-timeout>=2.3" "openai>=1.40" \
      && python -m pytest -p no:cacheprovider --junitxml=/results/exactness.xml "$@"' \
    exactness "${tests[@]}" > "$OUT/exactness.log" 2>&1 || { tail -60 "$OUT/exactness.log" >&2; return 1; }
  note "  $(grep -E '^=+ .*(passed|failed)' "$OUT/exactness.log" | tail -1)"
}

tensor_parallel() {
  corrigo_serve tp2 -e CORRIGO_ENGINE__TENSOR_PARALLEL_SIZE=2 || return 1
  client -c "$SMOKE" "$URL" "$SERVED" /results/smoke-tp2.json || return 1
  stop tp2
}

# benchmark NAME [docker run options...] -- ARGS...: serve, measure with bench/serving.py, stop.
benchmark() {
  local name=$1
  serve "$@" || return 1
  # shellcheck disable=SC2086  # CONCURRENCY is a list of numbers
  client -m bench.serving --model "/models/$SERVED" --url "$name=$URL" \
    --requests "$REQUESTS" --max-tokens "$MAX_TOKENS" --concurrency $CONCURRENCY \
    --out "/results/serving-$name.json" > "$OUT/serving-$name.log" 2>&1 || return 1
  stop "$name"
}

vllm_args=(serve "/models/$SERVED" --served-model-name "$SERVED" --host 0.0.0.0 --port 8000)

{
  echo "# corrigo GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "- commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "- model: $MODEL ($(grep -o '"architectures"[^]]*]' "$MODEL/config.json" | tr -d '\n'))"
  echo "- GPUs: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | paste -sd ';' -)"
  echo "- docker: $(docker version -f '{{.Server.Version}}')"
  echo "- benchmark: $REQUESTS requests x $MAX_TOKENS tokens, concurrency $CONCURRENCY"
  echo
} > "$SUMMARY"

step "build the image" build
step "VLLM_USE_V2_MODEL_RUNNER=1 refused at start-up" v2_runner_refused
step "corrigo serves the model (greedy, sampled, chat, metrics)" smoke
step "exactness on the GPU ($CHECK_TESTS)" exactness
if [ "$(nvidia-smi -L | grep -c '^GPU')" -ge 2 ]; then
  step "tensor parallelism 2" tensor_parallel
else
  note "- SKIP tensor parallelism 2 (one GPU)"
fi
step "benchmark: vllm serve, V1 model runner" benchmark vllm-v1 --init --entrypoint vllm -- "${vllm_args[@]}"
step "benchmark: vllm serve, vLLM's default runner" benchmark vllm-default --init --entrypoint env -- -u VLLM_USE_V2_MODEL_RUNNER vllm "${vllm_args[@]}"
step "benchmark: corrigo" benchmark corrigo -- serve --host 0.0.0.0 --port 8000 --model "/models/$SERVED" --served-model-name "$SERVED"
client -m bench.serving --table /results/serving-vllm-v1.json /results/serving-vllm-default.json /results/serving-corrigo.json > "$OUT/serving.md"
{
  echo
  echo "## Serving (vs vllm serve on the V1 runner)"
  echo
  cat "$OUT/serving.md"
} >> "$SUMMARY"
echo "gpu_check: all steps passed; $SUMMARY"
