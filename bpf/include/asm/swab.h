/* See types.h. */
#pragma once
#include <asm-generic/swab.h>
