#!/usr/bin/env bash
# Installs what icapwatch needs, from Debian's packages and the Go module
# proxy. Safe to run again: it installs only what is missing.
#
#   scripts/deps.sh demo   what `make demo` needs: make and certificates (the
#                          eBPF objects are committed; no compiler, no tools)
#   scripts/deps.sh [test] everything to build, regenerate and test
#
# It needs neither make nor git, which a fresh Debian does not have.
set -euo pipefail
profile=${1:-test}

# gcc: the race detector needs cgo. iproute2: network namespaces in tests.
# clang-14, llvm-14 (llvm-strip), libbpf-dev and linux-libc-dev: make generate
# builds the eBPF objects with exactly this compiler, so they do not drift.
# prometheus: promtool checks the exported metrics (and later the rules).
# tcpdump, tshark: make fixtures records test captures; make bench times tshark.
# c-icap: a real ICAP server for the end-to-end tests and the capture fixtures
# (internal/cicap runs private instances; the system's service is not used).
# squid-openssl: a real ICAP client over TLS for TestSquidPool (a private instance).
# rpm, systemd: the packaging tests read and install the rpm (the packages
# themselves are built by nfpm, in Go) and systemd-analyze verifies the units.
# qemu-system-x86, cpio: make test-kernels boots Debian's 6.1 kernel under
# qemu (software emulation, no KVM needed) from an initramfs that cpio packs.
case "$profile" in
demo) packages=(ca-certificates make) ;;
test) packages=(gcc libc6-dev iproute2 ca-certificates git make clang-14 llvm-14 libbpf-dev linux-libc-dev prometheus
	tcpdump tshark c-icap squid-openssl rpm systemd qemu-system-x86 cpio) ;;
*)
	echo "deps: usage: scripts/deps.sh [demo|test]" >&2
	exit 2
	;;
esac
go_min=1.26

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
		exit 1
	fi
	echo "deps: installing ${missing[*]}"
	# apt's progress and debconf's notes go to a log, shown only on failure.
	log=$(mktemp)
	trap 'rm -f "$log"' EXIT
	# c-icap and squid ship system services; the tests run private
	# instances and the install starts none (invoke-rc.d asks policy-rc.d).
	policy=/usr/sbin/policy-rc.d
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy"
		trap 'rm -f "$log" "$policy"' EXIT
	fi
	if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"${missing[@]}"; } >"$log" 2>&1; then
		cat "$log" >&2
		echo "deps: apt-get failed" >&2
		exit 1
	fi
fi

# Debian's golang package is older than the module needs; use the toolchain
# on PATH (or /usr/local/go) and say so clearly when it is too old.
export PATH="$PATH:/usr/local/go/bin"
if ! command -v go >/dev/null; then
	echo "deps: Go $go_min or newer is needed (https://go.dev/dl/); none found on PATH or in /usr/local/go" >&2
	exit 1
fi
have=$(go env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$go_min" "$have" | sort -V | head -1)" != "$go_min" ]; then
	echo "deps: Go $go_min or newer is needed, found $have" >&2
	exit 1
fi
go mod download
echo "deps: ok (go $have)"
