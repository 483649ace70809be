package bpf

// The objects are built with Debian's clang 14 (make generate) and
// committed; CI rebuilds them and fails when they differ. The perf buffer
// object is the 4.18 baseline; the ring buffer one is the same source for
// kernels that have BPF_MAP_TYPE_RINGBUF (5.8+).

//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -Iinclude" -target bpfel -tags linux -type event -type config -type tuple_offsets -type event_type -type event_flag -type counter -type direction -type hook -type phase icapwatch icapwatch.c
//go:generate go tool bpf2go -cc clang-14 -strip llvm-strip-14 -cflags "-O2 -g -Wall -Werror -Iinclude -DICAPWATCH_RINGBUF" -target bpfel -tags linux -no-global-types icapwatchRingbuf icapwatch.c
