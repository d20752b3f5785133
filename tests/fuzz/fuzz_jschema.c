/*
 * fuzz_jschema.c — libFuzzer target for core/jschema.c: each input is a record
 * schema as JSON text (what POST /v1/datasets takes). Any input must either
 * translate or be refused with a terminated one-line message, never crash,
 * leak or recurse without bound. A translation must be a plain object root,
 * and translating it again must give it back unchanged (the strict form is a
 * fixed point: nothing is made nullable twice, nothing is dropped later).
 * Build with -DSL_FUZZ=ON (clang).
 * Run: fuzz_jschema -max_total_time=60 tests/fuzz/corpus/jschema
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/jschema.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    json_t *in = json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL);
    json_t *out = NULL, *again = NULL;

    if (in == NULL)
        return 0;
    if (sl_jschema_openai(in, &out, err, sizeof err) == 0) {
        json_t *type = json_object_get(out, "type");
        if (!json_is_string(type) || strcmp(json_string_value(type), "object") != 0)
            __builtin_trap(); /* the root is always a plain object */
        if (json_object_get(out, "additionalProperties") != json_false())
            __builtin_trap();
        if (sl_jschema_openai(out, &again, err, sizeof err) != 0 || !json_equal(out, again))
            __builtin_trap(); /* not a fixed point */
    } else if (memchr(err, '\0', sizeof err) == NULL || out != NULL) {
        __builtin_trap(); /* the message must always be terminated; nothing returned */
    }
    json_decref(again);
    json_decref(out);
    json_decref(in);
    return 0;
}
