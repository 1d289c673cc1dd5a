/* Architecture-neutral stand-in for <asm/types.h>, so that <linux/bpf.h>
 * compiles with -target bpfel without the host's multiarch include dir. */
#pragma once
#include <asm-generic/types.h>
