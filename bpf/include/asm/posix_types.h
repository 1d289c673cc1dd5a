/* See types.h. */
#pragma once
#include <asm-generic/posix_types.h>
