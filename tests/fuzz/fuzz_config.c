/*
 * fuzz_config.c — libFuzzer target for the config loader (core/config.c).
 *
 * Feeds arbitrary bytes to sl_config_load_string: any input must either load
 * (and free cleanly) or fail with a one-line message, never crash or leak.
 * Build with -DSL_FUZZ=ON (clang). ${VAR} references resolve against the
 * fuzzer's environment, which is fine: unset ones are just errors.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sl_config_t *cfg = NULL;
    char err[256];

    if (sl_config_load_string((const char *)data, size, "fuzz.yaml", &cfg, err, sizeof(err)) == 0) {
        /* Touch the result so the fuzzer sees the whole structure built. */
        (void)sl_config_service(cfg, "tika");
        sl_config_free(cfg);
    } else if (memchr(err, '\0', sizeof(err)) == NULL) {
        __builtin_trap(); /* the message must always be terminated */
    }
    return 0;
}
