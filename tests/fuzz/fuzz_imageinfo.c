/*
 * fuzz_imageinfo.c — libFuzzer target for core/imageinfo.c: each input is the
 * start of an image file. Any input must be parsed or refused without reading
 * out of bounds, looping without bound or crashing; a parsed image always has
 * a known format and non-zero sizes.
 * Build with -DSL_FUZZ=ON (clang).
 * Run: fuzz_imageinfo -max_total_time=60
 */
#include <stddef.h>
#include <stdint.h>

#include "core/imageinfo.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sl_imageinfo_t info;
    if (sl_imageinfo_mem(data, size, &info) == 0 &&
        (info.format == NULL || info.width == 0 || info.height == 0))
        __builtin_trap();
    return 0;
}
