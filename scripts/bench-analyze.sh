#!/usr/bin/env bash
# Times `icapwatch analyze` against `tshark -r` doing a comparable TCP
# analysis (conversation statistics) on the same synthetic capture.
# Runs alternate, three of each; medians are compared. Usage:
#   scripts/bench-analyze.sh bin/icapwatch [packets]
set -euo pipefail
bin=$1
packets=${2:-1000000}
command -v tshark >/dev/null || { echo "bench-analyze: tshark not found (apt-get install tshark)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
go run ./scripts/synth -n "$packets" -o "$dir/synthetic.pcap"

ns() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1; e=$(date +%s%N); echo $((e - s)); }
median() { printf '%s\n' "$@" | sort -n | sed -n 2p; }
ours=() theirs=()
for _ in 1 2 3; do
	ours+=("$(ns "$bin" analyze --ports 11344 "$dir/synthetic.pcap")")
	theirs+=("$(ns tshark -r "$dir/synthetic.pcap" -q -z conv,tcp)")
done
a=$(median "${ours[@]}")
b=$(median "${theirs[@]}")
awk -v p="$packets" -v a="$a" -v b="$b" 'BEGIN {
	printf "| tool | packets | median time | packets/s |\n|---|---|---|---|\n"
	printf "| icapwatch analyze | %d | %.3f s | %.0f |\n", p, a/1e9, p/(a/1e9)
	printf "| tshark -r -z conv,tcp | %d | %.3f s | %.0f |\n", p, b/1e9, p/(b/1e9)
	printf "\nicapwatch analyze is %.1fx faster than tshark\n", b/a
}'
