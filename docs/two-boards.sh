#!/usr/bin/env bash
# Two QEMU boards behind nginx: each board gets its own card with a small synthetic model
# (board A tiny-a.gguf, board B tiny-b.gguf) and its own `tessera serve --qemu`, on ports
# BASE+1 and BASE+2; nginx (docs/nginx-tessera.conf, least_conn) listens on BASE (default
# 8080). Then 16 chat completions go through nginx, 8 at a time, and the script prints which
# board answered each (the answer's model says it) and each gateway's request count.
# Needs build/kernel8.img (`make build`) and nginx (installed with apt-get when run as root).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
base="${BASE:-8080}"
work="$root/build/two-boards"
mkdir -p "$work/logs"

if ! command -v nginx >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "error: nginx is missing: sudo apt-get install nginx-light"; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
[ -f build/kernel8.img ] || { echo "error: build/kernel8.img is missing: make build"; exit 1; }

cargo build --release -q -p cli -p sdimage
tessera=target/release/tessera
for board in a b; do
  seed=$([ $board = a ] && echo 7 || echo 9)
  "$tessera" gen-model "$work/tiny-$board.gguf" --seed $seed --dim 64 --hidden 96 --vocab 320 --seq 512 \
    --format gguf-q8_0 >/dev/null
  target/release/tessera-sdimage "$work/board-$board.img" --kernel build/kernel8.img \
    --model "$work/tiny-$board.gguf" >"$work/logs/sdimage-$board.log" 2>&1
done

pids=()
cleanup() {
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

port=$((base + 1))
for board in a b; do
  "$tessera" serve --qemu --kernel build/kernel8.img --sd "$work/board-$board.img" \
    --listen "127.0.0.1:$port" --board-log "$work/logs/board-$board.log" 2>"$work/logs/serve-$board.log" &
  pids+=($!)
  port=$((port + 1))
done
for port in $((base + 1)) $((base + 2)); do
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && break
    sleep 0.5
  done
  echo "gateway :$port: $(curl -s "http://127.0.0.1:$port/health")"
done

sed -e "s/127.0.0.1:8081/127.0.0.1:$((base + 1))/; s/127.0.0.1:8082/127.0.0.1:$((base + 2))/; s/127.0.0.1:8080/127.0.0.1:$base/" \
  docs/nginx-tessera.conf >"$work/tessera.conf"
cat >"$work/nginx.conf" <<CONF
daemon on;
pid $work/nginx.pid;
error_log $work/logs/nginx-error.log;
events {}
http {
    access_log $work/logs/nginx-access.log;
    include $work/tessera.conf;
}
CONF
nginx -p "$work" -c "$work/nginx.conf"
for _ in $(seq 100); do curl -s "http://127.0.0.1:$base/health" >/dev/null && break; sleep 0.1; done

echo "16 chat completions through nginx on :$base, 8 at a time:"
seq 16 | xargs -P 8 -I{} curl -s "http://127.0.0.1:$base/v1/chat/completions" \
  -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"Question {}"}],"max_tokens":200}' \
  | grep -o '"model":"[^"]*"' | sort | uniq -c
for port in $((base + 1)) $((base + 2)); do
  echo "gateway :$port: $(curl -s "http://127.0.0.1:$port/metrics" | grep '^tessera_requests_total{endpoint="/v1/chat')"
done
echo "streamed through nginx:"
curl -sN "http://127.0.0.1:$base/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":3,"stream":true}' | grep -c '^data: ' \
  | sed 's/^/  events: /'
