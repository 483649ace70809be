/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The BPF target has no asm/ directory of its own: take the generic one. */
#include <asm-generic/bitsperlong.h>
