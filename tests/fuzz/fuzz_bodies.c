/*
 * fuzz_bodies.c — libFuzzer target for the JSON request bodies' validation
 * (api/validate.c): POST /v1/datasets, POST /v1/admin/tenants and
 * POST /v1/files/{id}/process, exactly as their handlers call it. Byte 0
 * picks the route; the rest is the body. What is accepted must be what the
 * handler may use: a non-empty name of at most 200 characters, a schema
 * text that parses back to an object, process names that are known and
 * distinct. A refusal always has a status, a code and a terminated message.
 */
#include "api/validate.h"
#include "core/err.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const known[] = {"ocr", "invoice", "tika_text", "p"};

static void check_err(const sl_api_verr_t *e)
{
    if ((e->status != 400 && e->status != 500) || e->code == NULL || e->code[0] == '\0' ||
        memchr(e->msg, '\0', sizeof e->msg) == NULL)
        __builtin_trap();
}

static void check_name(const char *name)
{
    size_t chars = 0;
    if (name == NULL || name[0] == '\0')
        __builtin_trap();
    for (const char *s = name; *s; s++)
        chars += ((unsigned char)*s & 0xC0) != 0x80;
    if (chars > SL_API_NAME_MAX)
        __builtin_trap();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sl_api_verr_t e;
    if (size < 1)
        return 0;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    int route = data[0] % 3;

    if (route == 2) {
        char names[SL_CONFIG_MAX_PIPELINES][SL_API_PIPELINE_NAME_MAX];
        int n = -1, explicit_list = -1;
        int rc = sl_api_process_body(body, len, known, 4, names, &n, &explicit_list, &e);
        if (rc != 0) {
            if (rc != SL_EINVAL || n != 0)
                __builtin_trap();
            check_err(&e);
            return 0;
        }
        if (n < 0 || n > 4 || (explicit_list && n == 0) || (!explicit_list && n != 0))
            __builtin_trap();
        for (int i = 0; i < n; i++) {
            int k = 0;
            while (k < 4 && strcmp(known[k], names[i]) != 0)
                k++;
            if (k == 4)
                __builtin_trap();
            for (int j = 0; j < i; j++)
                if (strcmp(names[i], names[j]) == 0)
                    __builtin_trap();
        }
        return 0;
    }

    json_t *root = NULL;
    if (sl_api_json_object(body, len, &root, &e) != 0) {
        if (root != NULL)
            __builtin_trap();
        check_err(&e);
        return 0;
    }
    const char *name = NULL;
    if (route == 0) {
        char *schema_text = NULL;
        int rc = sl_api_dataset_body(root, &name, &schema_text, &e);
        if (rc == 0) {
            check_name(name);
            if (schema_text != NULL) {
                json_t *back = json_loads(schema_text, 0, NULL);
                if (!json_is_object(back))
                    __builtin_trap();
                json_decref(back);
            }
        } else {
            if (schema_text != NULL || name != NULL)
                __builtin_trap();
            check_err(&e);
        }
        free(schema_text);
    } else {
        if (sl_api_tenant_body(root, &name, &e) == 0)
            check_name(name);
        else
            check_err(&e);
    }
    json_decref(root);
    return 0;
}
