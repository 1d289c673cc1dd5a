/* See types.h: BPF is a 64-bit target. */
#pragma once
#include <asm-generic/bitsperlong.h>
