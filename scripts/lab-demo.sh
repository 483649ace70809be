#!/usr/bin/env bash
# The lab server and probes against it, on loopback:
#  1. phase timings of OPTIONS on a fresh, then a reused (kept-alive) connection;
#  2. the hang icapwatch exists for: two idle connections hold both of the
#     server's workers, and a third connection is ACKed by the kernel but not
#     served until the server idle-closes one of them.
# Usage: scripts/lab-demo.sh [path/to/icapwatch]; LAB_ADDR and IDLE_TIMEOUT
# override the address (127.0.0.1:11344) and the server idle timeout (20s).
set -euo pipefail

bin=${1:-bin/icapwatch}
addr=${LAB_ADDR:-127.0.0.1:11344}
idle=${IDLE_TIMEOUT:-20s}
url="icaps://$addr/SYMCScanResp-AV"
work=$(mktemp -d)
pids=()

cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

"$bin" lab --listen "$addr" --plain-listen "" --workers 2 --idle-timeout "$idle" \
	--cert-out "$work/lab.pem" >"$work/lab.out" 2>"$work/lab.log" &
pids+=($!)
for _ in $(seq 50); do
	grep -q "secure ICAP" "$work/lab.out" 2>/dev/null && break
	kill -0 "${pids[0]}" 2>/dev/null || { cat "$work/lab.log" >&2; exit 1; }
	sleep 0.1
done
echo "== lab server: $url, 2 workers, idle timeout $idle"
echo

echo "== 1. three probes 5 s apart on one kept-alive connection"
"$bin" probe --ca "$work/lab.pem" --count 3 --interval 5s "$url"
echo

echo "== 2. two applications' connections answer and stay idle, holding both workers"
for n in a b; do
	"$bin" probe --ca "$work/lab.pem" --count 2 --interval 10m --timeout 1m "$url" >"$work/$n.out" 2>&1 &
	pids+=($!)
done
sleep 1
echo "   a third connection now waits for a worker (its TLS handshake is ACKed, not answered) ..."
"$bin" probe --ca "$work/lab.pem" --timeout 1m "$url"
echo
echo "== what the server did (its log):"
grep -E "workers held|idle timeout|worker took" "$work/lab.log" | sed 's/^/   /' | tail -n 8
echo
echo "The third probe's tls phase is the hang: it lasted until the server idle-closed"
echo "one of the idle connections ($idle) and a worker became free."
