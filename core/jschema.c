/*
 * jschema.c — a record schema translated to OpenAI's strict Structured
 * Outputs form (see jschema.h for the contract, docs/flows.md for the user's
 * view).
 *
 * One pass over the input: each schema node is visited once, $ref is checked
 * and kept (never inlined), enum and const values are scanned but never
 * descended into, and dropped keywords are never looked inside. So the work is
 * linear in the input. Recursion goes one level per schema node and is bounded
 * by SL_JSCHEMA_MAX_JSON_DEPTH, checked before descending.
 *
 * The rules are OpenAI's ("Structured Outputs" guide, "Supported schemas"):
 *   supported types: string, number, boolean, integer, object, array, enum,
 *   anyOf (not at the root); supported properties: string pattern and format
 *   (the formats below), number/integer multipleOf, maximum,
 *   exclusiveMaximum, minimum, exclusiveMinimum, array minItems, maxItems;
 *   "additionalProperties": false on every object; every field required;
 *   definitions ($defs) and recursion ("#") through $ref. Limits below.
 * Choices of ours (documented in docs/flows.md):
 *   - oneOf is translated to anyOf: the model fills one branch, which is what
 *     oneOf means for extraction (the "exactly one" check is lost only when
 *     the branches overlap);
 *   - "additionalProperties": true is taken as false: a record only keeps
 *     the declared properties anyway (schema.shape drops the others);
 *   - a property with no type (and no properties, items, enum, const, anyOf
 *     or $ref to tell one) is a string; an array without items is an array of
 *     strings; an enum or const without a type gets the type its values share;
 *   - a "type" list may name one type besides "null" (several: use anyOf);
 *   - a $ref keeps no siblings (OpenAI wants it alone): its description is
 *     kept only where the ref is wrapped in an anyOf with null;
 *   - unknown keywords and value constraints OpenAI does not support are
 *     dropped; structure it cannot express is refused.
 */
#include "core/jschema.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/err.h"

/* "A schema may have up to 5000 object properties total, with up to 10 levels
 * of nesting." (Supported schemas, "Objects have limitations on nesting depth
 * and size"). A level is an object schema on the path from the root; the root
 * is level 1. */
#define SL_JSCHEMA_MAX_PROPERTIES 5000
#define SL_JSCHEMA_MAX_OBJECT_DEPTH 10

/* "In a schema, total string length of all property names, definition names,
 * enum values, and const values cannot exceed 120,000 characters." Counted in
 * code points, on the translated schema (so with what we add). */
#define SL_JSCHEMA_MAX_STRING_CHARS 120000

/* "A schema may have up to 1000 enum values across all enum properties."
 * Counted on the translated schema: the null we add to a nullable enum counts. */
#define SL_JSCHEMA_MAX_ENUM_VALUES 1000

/* "For a single enum property with string values, the total string length of
 * all enum values cannot exceed 15,000 characters when there are more than
 * 250 enum values." */
#define SL_JSCHEMA_LARGE_ENUM 250
#define SL_JSCHEMA_LARGE_ENUM_CHARS 15000

/* Ours, not OpenAI's: how many JSON levels below the root a schema node may
 * sit (a property is 2 levels down: "properties", name; an items 1; an anyOf
 * branch 2). Bounds the recursion whatever the input, and keeps a translated
 * schema (3 levels deep in the request, its keywords up to 2 more) within the
 * flow runtime's 64 levels of Lua<->JSON conversion (SL_FLOW_JSON_DEPTH). Ten
 * object levels need only about 20. */
#define SL_JSCHEMA_MAX_JSON_DEPTH 48

/* A path in an error message; a deeper one is cut and ends in "...". */
#define SL_JSCHEMA_PATH_MAX 256

/* The values "format" may take ("Supported properties", string). Others are dropped. */
static const char *const formats[] = {"date-time", "time", "date", "duration", "email",
                                      "hostname",  "ipv4", "ipv6", "uuid",     NULL};

/* Structure OpenAI cannot express: refused wherever they appear. */
static const char *const refused[] = {"allOf",
                                      "not",
                                      "if",
                                      "then",
                                      "else",
                                      "patternProperties",
                                      "dependentSchemas",
                                      "prefixItems",
                                      "$dynamicRef",
                                      "$recursiveRef",
                                      NULL};

/* Refused unless false (false says nothing a strict schema does not already say). */
static const char *const refused_unless_false[] = {"additionalItems", "unevaluatedItems",
                                                   "unevaluatedProperties", NULL};

typedef struct jctx_s {
    const json_t *defs;  /* the root's $defs (or definitions); borrowed; NULL if none */
    const char *defs_kw; /* "$defs" or "definitions" */
    size_t nprops;       /* object properties so far */
    size_t nenum;        /* enum values so far */
    size_t nchars;       /* property names, definition names, enum and const strings */
    char *err;
    size_t errlen;
    char path[SL_JSCHEMA_PATH_MAX]; /* JSON Pointer of the node being translated */
    size_t pathlen;                 /* logical length: may exceed what path holds */
} jctx_t;

/* ---- messages and paths ---- */

static int fail(jctx_t *c, const char *kw, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    const char *cut = c->pathlen >= sizeof c->path ? "..." : "";

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (c->errlen == 0)
        return SL_EINVAL;
    if (kw != NULL)
        snprintf(c->err, c->errlen, "\"%s\" at %s%s: %s", kw, c->pathlen ? c->path : "/", cut, msg);
    else
        snprintf(c->err, c->errlen, "at %s%s: %s", c->pathlen ? c->path : "/", cut, msg);
    return SL_EINVAL;
}

static int oom(jctx_t *c)
{
    if (c->errlen > 0)
        snprintf(c->err, c->errlen, "out of memory");
    return SL_ENOMEM;
}

static void path_putc(jctx_t *c, char ch)
{
    if (c->pathlen < sizeof c->path - 1) {
        c->path[c->pathlen] = ch;
        c->path[c->pathlen + 1] = '\0';
    }
    c->pathlen++;
}

/* Appends "/seg" (JSON Pointer escaped, RFC 6901) and returns the length to restore. */
static size_t path_push(jctx_t *c, const char *seg, size_t len)
{
    size_t saved = c->pathlen;
    path_putc(c, '/');
    for (size_t i = 0; i < len && c->pathlen < sizeof c->path; i++) {
        if (seg[i] == '~') {
            path_putc(c, '~');
            path_putc(c, '0');
        } else if (seg[i] == '/') {
            path_putc(c, '~');
            path_putc(c, '1');
        } else {
            path_putc(c, seg[i]);
        }
    }
    return saved;
}

static void path_pop(jctx_t *c, size_t saved)
{
    c->pathlen = saved;
    c->path[saved < sizeof c->path - 1 ? saved : sizeof c->path - 1] = '\0';
}

/* ---- small helpers ---- */

static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

static int add_chars(jctx_t *c, const char *kw, const char *s, size_t len)
{
    c->nchars += utf8_chars(s, len);
    if (c->nchars > SL_JSCHEMA_MAX_STRING_CHARS)
        return fail(c, kw,
                    "property names, definition names, enum and const values add up to more "
                    "than %d characters (OpenAI's limit)",
                    SL_JSCHEMA_MAX_STRING_CHARS);
    return 0;
}

/* Sets o[k] = v, taking v (NULL: out of memory). */
static int put(jctx_t *c, json_t *o, const char *k, json_t *v)
{
    if (v == NULL || json_object_set_new(o, k, v) != 0)
        return oom(c);
    return 0;
}

static int in_list(const char *const *list, const char *s)
{
    for (int i = 0; list[i] != NULL; i++)
        if (strcmp(list[i], s) == 0)
            return 1;
    return 0;
}

/* Copies title and description (strings only) from in to o. */
static int put_annotations(jctx_t *c, const json_t *in, json_t *o)
{
    static const char *const keys[] = {"title", "description", NULL};
    for (int i = 0; keys[i] != NULL; i++) {
        json_t *v = json_object_get(in, keys[i]);
        if (json_is_string(v) && put(c, o, keys[i], json_incref(v)) != 0)
            return SL_ENOMEM;
    }
    return 0;
}

/* Refuses the keywords OpenAI cannot express, wherever they are. */
static int check_refused(jctx_t *c, const json_t *in, int root)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)in, k, v)
    {
        if (in_list(refused, k))
            return fail(c, k, "not supported by OpenAI structured outputs");
        if (in_list(refused_unless_false, k) && !json_is_false(v))
            return fail(c, k, "not supported by OpenAI structured outputs (only false is)");
        if (!root && (strcmp(k, "$defs") == 0 || strcmp(k, "definitions") == 0))
            return fail(c, k, "definitions are only supported at the root");
    }
    if (json_object_get(in, "anyOf") != NULL && json_object_get(in, "oneOf") != NULL)
        return fail(c, "oneOf", "cannot be combined with anyOf");
    if (json_object_get(in, "enum") != NULL && json_object_get(in, "const") != NULL)
        return fail(c, "const", "cannot be combined with enum");
    return 0;
}

/* The first of keys (NULL-terminated) that in has, or NULL. */
static const char *first_present(const json_t *in, const char *const *keys)
{
    for (int i = 0; keys[i] != NULL; i++)
        if (json_object_get(in, keys[i]) != NULL)
            return keys[i];
    return NULL;
}

/* ---- the translation ---- */

static int tr_node(jctx_t *c, const json_t *in, int jdepth, int odepth, int nullable, json_t **out);

/* Translates the child in at path + /seg1[/seg2], jdepth JSON levels below the root. */
static int tr_child(jctx_t *c, const json_t *in, const char *seg1, const char *seg2, size_t seg2len,
                    int jdepth, int odepth, int nullable, json_t **out)
{
    size_t saved = path_push(c, seg1, strlen(seg1));
    int err;
    *out = NULL;
    if (seg2 != NULL)
        path_push(c, seg2, seg2len);
    if (jdepth > SL_JSCHEMA_MAX_JSON_DEPTH)
        err = fail(c, NULL, "the schema is nested more than %d JSON levels deep",
                   SL_JSCHEMA_MAX_JSON_DEPTH);
    else
        err = tr_node(c, in, jdepth, odepth, nullable, out);
    path_pop(c, saved);
    return err;
}

/* "properties" (all required, in order) and "additionalProperties": false. */
static int tr_object(jctx_t *c, const json_t *in, int jdepth, int odepth, json_t *o)
{
    json_t *props = json_object_get(in, "properties");
    json_t *ap = json_object_get(in, "additionalProperties");
    json_t *oprops = NULL, *req = NULL;
    int err;

    if (odepth + 1 > SL_JSCHEMA_MAX_OBJECT_DEPTH)
        return fail(c, props != NULL ? "properties" : "type",
                    "objects nested more than %d levels deep (OpenAI's limit)",
                    SL_JSCHEMA_MAX_OBJECT_DEPTH);
    if (props != NULL && !json_is_object(props))
        return fail(c, "properties", "must be an object");
    if (ap != NULL && !json_is_boolean(ap))
        return fail(c, "additionalProperties",
                    "a schema for additional properties is not supported by OpenAI structured "
                    "outputs (only false)");
    if (props != NULL && json_object_size(props) > SL_JSCHEMA_MAX_PROPERTIES - c->nprops)
        return fail(c, "properties",
                    "more than %d object properties in the schema (OpenAI's limit)",
                    SL_JSCHEMA_MAX_PROPERTIES);
    c->nprops += props != NULL ? json_object_size(props) : 0;

    if ((oprops = json_object()) == NULL || (req = json_array()) == NULL) {
        err = oom(c);
        goto fail;
    }
    for (void *it = props != NULL ? json_object_iter(props) : NULL; it != NULL;
         it = json_object_iter_next(props, it)) {
        const char *name = json_object_iter_key(it);
        size_t len = json_object_iter_key_len(it);
        json_t *sub;
        size_t saved = path_push(c, "properties", 10);
        path_push(c, name, len);
        err = add_chars(c, NULL, name, len);
        path_pop(c, saved);
        if (err != 0)
            goto fail;
        err = tr_child(c, json_object_iter_value(it), "properties", name, len, jdepth + 2,
                       odepth + 1, 1, &sub);
        if (err != 0)
            goto fail;
        if (json_object_setn_new(oprops, name, len, sub) != 0 ||
            json_array_append_new(req, json_stringn(name, len)) != 0) {
            err = oom(c);
            goto fail;
        }
    }
    err = put(c, o, "properties", oprops);
    oprops = NULL;
    if (err == 0)
        err = put(c, o, "required", req);
    req = NULL;
    if (err == 0)
        err = put(c, o, "additionalProperties", json_false());
fail:
    json_decref(oprops);
    json_decref(req);
    return err;
}

/* "items" (one schema; absent: strings), "minItems", "maxItems". */
static int tr_array(jctx_t *c, const json_t *in, int jdepth, int odepth, json_t *o)
{
    static const char *const counts[] = {"minItems", "maxItems", NULL};
    json_t *items = json_object_get(in, "items");
    json_t *oitems = NULL;
    int err;

    if (json_is_array(items))
        return fail(c, "items",
                    "a list of item schemas (a tuple) is not supported by OpenAI "
                    "structured outputs");
    for (int i = 0; counts[i] != NULL; i++) {
        json_t *v = json_object_get(in, counts[i]);
        if (v != NULL && (!json_is_integer(v) || json_integer_value(v) < 0))
            return fail(c, counts[i], "must be a non-negative integer");
    }
    if (items == NULL)
        oitems = json_pack("{ss}", "type", "string");
    else if ((err = tr_child(c, items, "items", NULL, 0, jdepth + 1, odepth, 0, &oitems)) != 0)
        return err;
    if ((err = put(c, o, "items", oitems)) != 0)
        return err;
    for (int i = 0; counts[i] != NULL; i++) {
        json_t *v = json_object_get(in, counts[i]);
        if (v != NULL && (err = put(c, o, counts[i], json_incref(v))) != 0)
            return err;
    }
    return 0;
}

/* 1 if v is a value of type ty (NULL: any scalar). */
static int fits(const json_t *v, const char *ty)
{
    if (json_is_null(v))
        return 1;
    if (ty == NULL)
        return 1;
    if (strcmp(ty, "string") == 0)
        return json_is_string(v);
    if (strcmp(ty, "integer") == 0)
        return json_is_integer(v);
    if (strcmp(ty, "number") == 0)
        return json_is_number(v);
    if (strcmp(ty, "boolean") == 0)
        return json_is_boolean(v);
    return 0; /* object, array: no enum */
}

/*
 * "enum" (kw "enum": the array vals) or "const" (kw "const": the value
 * vals) into o, checked against ty and the limits. A nullable const becomes
 * an enum of it and null (a const cannot be null as well).
 */
static int tr_enum(jctx_t *c, const char *kw, const json_t *vals, const char *ty, int nullable,
                   json_t *o)
{
    int is_const = strcmp(kw, "const") == 0;
    size_t n = is_const ? 1 : json_array_size(vals);
    size_t chars = 0, nstrings = 0;
    int has_null = 0;
    json_t *arr = NULL;

    if (!is_const && (!json_is_array(vals) || n == 0))
        return fail(c, kw, "must be a non-empty array");
    for (size_t i = 0; i < n; i++) {
        const json_t *v = is_const ? vals : json_array_get(vals, i);
        if (json_is_object(v) || json_is_array(v))
            return fail(c, kw, "only strings, numbers, booleans and null are supported");
        if (!fits(v, ty))
            return fail(c, kw, "%s does not match the type \"%s\"",
                        is_const ? "the value" : "a value", ty);
        if (json_is_string(v)) {
            chars += utf8_chars(json_string_value(v), json_string_length(v));
            nstrings++;
        }
        has_null |= json_is_null(v);
    }
    if (is_const && (!nullable || has_null)) {
        /* kept as a const: counts as a const value, not an enum value */
        c->nchars += chars;
        if (c->nchars > SL_JSCHEMA_MAX_STRING_CHARS)
            return add_chars(c, kw, "", 0);
        return put(c, o, "const", json_incref((json_t *)vals));
    }
    if (nullable && !has_null)
        n++;
    if (n > SL_JSCHEMA_MAX_ENUM_VALUES - c->nenum)
        return fail(c, kw, "more than %d enum values in the schema (OpenAI's limit)",
                    SL_JSCHEMA_MAX_ENUM_VALUES);
    c->nenum += n;
    if (n > SL_JSCHEMA_LARGE_ENUM && nstrings > 0 && chars > SL_JSCHEMA_LARGE_ENUM_CHARS)
        return fail(c, kw,
                    "an enum of more than %d values may have at most %d characters of strings "
                    "(OpenAI's limit)",
                    SL_JSCHEMA_LARGE_ENUM, SL_JSCHEMA_LARGE_ENUM_CHARS);
    c->nchars += chars;
    if (c->nchars > SL_JSCHEMA_MAX_STRING_CHARS)
        return add_chars(c, kw, "", 0); /* the same message */

    if (is_const)
        arr = json_pack("[O]", vals);
    else
        arr = json_copy((json_t *)vals); /* shallow: the scalars are shared */
    if (arr == NULL)
        return oom(c);
    if (nullable && !has_null && json_array_append_new(arr, json_null()) != 0) {
        json_decref(arr);
        return oom(c);
    }
    return put(c, o, "enum", arr);
}

/* The type an enum's (or const's) values share, or NULL when they differ. */
static const char *values_type(const json_t *vals, int is_const)
{
    const char *ty = NULL;
    size_t n = is_const ? 1 : json_array_size(vals);
    for (size_t i = 0; i < n; i++) {
        const json_t *v = is_const ? vals : json_array_get(vals, i);
        const char *t;
        if (json_is_null(v))
            continue;
        if (json_is_string(v))
            t = "string";
        else if (json_is_integer(v))
            t = "integer";
        else if (json_is_real(v))
            t = "number";
        else if (json_is_boolean(v))
            t = "boolean";
        else
            return NULL;
        if (ty == NULL || (strcmp(ty, "integer") == 0 && strcmp(t, "number") == 0))
            ty = t;
        else if (strcmp(ty, t) != 0 && !(strcmp(ty, "number") == 0 && strcmp(t, "integer") == 0))
            return NULL;
    }
    return ty;
}

static const char *const type_names[] = {"string", "number", "integer", "boolean",
                                         "object", "array",  "null",    NULL};

/*
 * The node's declared type: *ty the one besides "null" (NULL: none, e.g. an
 * untyped enum or {"type": "null"}), *has_null whether "null" was declared.
 */
/* The type an enum's or const's values imply (NULL: none, or they differ). */
static const char *values_implied(const json_t *in)
{
    json_t *e = json_object_get(in, "enum");
    json_t *k = json_object_get(in, "const");
    if (json_is_array(e))
        return values_type(e, 0);
    return k != NULL ? values_type(k, 1) : NULL;
}

static int node_type(jctx_t *c, const json_t *in, const char **ty, int *has_null)
{
    json_t *t = json_object_get(in, "type");
    *ty = NULL;
    *has_null = 0;
    if (t == NULL) {
        if (json_object_get(in, "properties") != NULL)
            *ty = "object";
        else if (json_object_get(in, "items") != NULL)
            *ty = "array";
        else if (json_object_get(in, "enum") != NULL || json_object_get(in, "const") != NULL)
            *ty = values_implied(in);
        else
            *ty = "string"; /* untyped: text is the safe guess */
        return 0;
    }
    if (json_is_string(t)) {
        if (!in_list(type_names, json_string_value(t)))
            return fail(c, "type", "unknown type \"%s\"", json_string_value(t));
        if (strcmp(json_string_value(t), "null") == 0)
            *has_null = 1;
        else
            *ty = json_string_value(t);
        if (*ty == NULL) /* {"type": "null", "enum": ["x", null]}: the values say */
            *ty = values_implied(in);
        return 0;
    }
    if (!json_is_array(t) || json_array_size(t) == 0)
        return fail(c, "type", "must be a type name or a non-empty array of them");
    for (size_t i = 0; i < json_array_size(t); i++) {
        json_t *e = json_array_get(t, i);
        if (!json_is_string(e))
            return fail(c, "type", "must be a type name or a non-empty array of them");
        if (!in_list(type_names, json_string_value(e)))
            return fail(c, "type", "unknown type \"%s\"", json_string_value(e));
        if (strcmp(json_string_value(e), "null") == 0) {
            *has_null = 1;
        } else if (*ty == NULL) {
            *ty = json_string_value(e);
        } else if (strcmp(*ty, json_string_value(e)) != 0) {
            return fail(c, "type",
                        "more than one type besides \"null\" is not supported (use "
                        "anyOf)");
        }
    }
    if (*ty == NULL) /* ["null"] with an enum or const: the values say */
        *ty = values_implied(in);
    return 0;
}

/* A schema with "anyOf" (or "oneOf", translated to anyOf). */
static int tr_anyof(jctx_t *c, const json_t *in, const char *kw, int jdepth, int odepth,
                    int nullable, json_t *o)
{
    static const char *const alone[] = {"type",  "properties", "items", "enum",
                                        "const", "$ref",       NULL};
    const json_t *arr = json_object_get(in, kw);
    const char *other = first_present(in, alone);
    json_t *oarr = NULL;
    int has_null = 0, err;

    if (other != NULL)
        return fail(c, other, "cannot be combined with %s (put it in each branch)", kw);
    if (!json_is_array(arr) || json_array_size(arr) == 0)
        return fail(c, kw, "must be a non-empty array of schemas");
    if ((oarr = json_array()) == NULL)
        return oom(c);
    for (size_t i = 0; i < json_array_size(arr); i++) {
        char idx[24];
        json_t *b, *bt;
        int n = snprintf(idx, sizeof idx, "%zu", i);
        err = tr_child(c, json_array_get(arr, i), kw, idx, (size_t)n, jdepth + 2, odepth, 0, &b);
        if (err != 0)
            goto fail;
        bt = json_object_get(b, "type");
        has_null |= json_is_string(bt) && strcmp(json_string_value(bt), "null") == 0;
        if (json_array_append_new(oarr, b) != 0) {
            err = oom(c);
            goto fail;
        }
    }
    if (nullable && !has_null &&
        json_array_append_new(oarr, json_pack("{ss}", "type", "null")) != 0) {
        err = oom(c);
        goto fail;
    }
    if ((err = put_annotations(c, in, o)) != 0)
        goto fail;
    err = put(c, o, "anyOf", oarr);
    oarr = NULL;
fail:
    json_decref(oarr);
    return err;
}

/* A schema with "$ref": "#" (the root) or "#/$defs/<name>" of this schema. */
static int tr_ref(jctx_t *c, const json_t *in, int nullable, json_t *o)
{
    static const char *const alone[] = {"type",  "properties", "items", "enum",
                                        "const", "anyOf",      "oneOf", NULL};
    const json_t *ref = json_object_get(in, "$ref");
    const char *other = first_present(in, alone);
    const char *r;
    json_t *oref;
    int err;

    if (other != NULL)
        return fail(c, other, "cannot be combined with $ref");
    if (!json_is_string(ref))
        return fail(c, "$ref", "must be a string");
    r = json_string_value(ref);
    if (strcmp(r, "#") != 0) {
        /* Definition names are compared as written, so a name that would be
         * escaped in a JSON Pointer (with '~' or '/') cannot be referenced:
         * "#/$defs/a/b" points into a definition, not at one named "a/b". */
        size_t kwlen = c->defs_kw != NULL ? strlen(c->defs_kw) : 0;
        if (c->defs == NULL || strncmp(r, "#/", 2) != 0 || strncmp(r + 2, c->defs_kw, kwlen) != 0 ||
            r[2 + kwlen] != '/' || strpbrk(r + 3 + kwlen, "/~") != NULL ||
            json_object_get(c->defs, r + 3 + kwlen) == NULL)
            return fail(c, "$ref",
                        "only \"#\" and \"#/$defs/<name>\" of this schema can be referenced");
    }
    if (!nullable)
        return put(c, o, "$ref", json_incref((json_t *)ref));
    /* OpenAI wants a $ref alone: a nullable one is an anyOf with null. */
    if ((err = put_annotations(c, in, o)) != 0)
        return err;
    oref = json_pack("[{sO}{ss}]", "$ref", ref, "type", "null");
    return put(c, o, "anyOf", oref);
}

static int tr_node(jctx_t *c, const json_t *in, int jdepth, int odepth, int nullable, json_t **out)
{
    static const char *const numeric[] = {"multipleOf", "maximum",          "exclusiveMaximum",
                                          "minimum",    "exclusiveMinimum", NULL};
    json_t *o = NULL, *v;
    const char *ty;
    int has_null, err;

    *out = NULL;
    if (!json_is_object(in))
        return fail(c, NULL, "a schema must be a JSON object");
    if ((err = check_refused(c, in, 0)) != 0)
        return err;
    if ((o = json_object()) == NULL)
        return oom(c);

    if (json_object_get(in, "anyOf") != NULL || json_object_get(in, "oneOf") != NULL) {
        err = tr_anyof(c, in, json_object_get(in, "anyOf") != NULL ? "anyOf" : "oneOf", jdepth,
                       odepth, nullable, o);
        goto out;
    }
    if (json_object_get(in, "$ref") != NULL) {
        err = tr_ref(c, in, nullable, o);
        goto out;
    }
    if ((err = node_type(c, in, &ty, &has_null)) != 0)
        goto out;
    if (ty != NULL && (nullable || has_null))
        err = put(c, o, "type", json_pack("[ss]", ty, "null"));
    else if (ty != NULL)
        err = put(c, o, "type", json_string(ty));
    else if (has_null && json_object_get(in, "enum") == NULL &&
             json_object_get(in, "const") == NULL)
        err = put(c, o, "type", json_string("null"));
    if (err == 0)
        err = put_annotations(c, in, o);
    if (err != 0)
        goto out;

    if (ty != NULL && strcmp(ty, "object") == 0) {
        err = tr_object(c, in, jdepth, odepth, o);
    } else if (ty != NULL && strcmp(ty, "array") == 0) {
        err = tr_array(c, in, jdepth, odepth, o);
    } else if (ty != NULL && strcmp(ty, "string") == 0) {
        v = json_object_get(in, "pattern");
        if (json_is_string(v))
            err = put(c, o, "pattern", json_incref(v));
        v = json_object_get(in, "format");
        if (err == 0 && json_is_string(v) && in_list(formats, json_string_value(v)))
            err = put(c, o, "format", json_incref(v));
    } else if (ty != NULL && (strcmp(ty, "number") == 0 || strcmp(ty, "integer") == 0)) {
        for (int i = 0; err == 0 && numeric[i] != NULL; i++) {
            v = json_object_get(in, numeric[i]);
            if (json_is_number(v)) /* draft 4's boolean exclusiveMaximum is dropped */
                err = put(c, o, numeric[i], json_incref(v));
        }
    }
    if (err != 0)
        goto out;
    if ((v = json_object_get(in, "enum")) != NULL)
        err = tr_enum(c, "enum", v, ty, nullable || has_null, o);
    else if ((v = json_object_get(in, "const")) != NULL)
        err = tr_enum(c, "const", v, ty, nullable || has_null, o);
out:
    if (err != 0) {
        json_decref(o);
        return err;
    }
    *out = o;
    return 0;
}

/* The root: a plain object schema, never nullable, with the $defs. */
static int tr_root(jctx_t *c, const json_t *in, json_t **out)
{
    static const char *const not_root[] = {"anyOf", "oneOf", "$ref", "enum", "const", NULL};
    json_t *o = NULL, *odefs = NULL, *defs;
    const char *kw, *ty;
    int has_null, err;

    if (!json_is_object(in))
        return fail(c, NULL, "the record schema must be a JSON object");
    if ((err = check_refused(c, in, 1)) != 0)
        return err;
    if ((kw = first_present(in, not_root)) != NULL)
        return fail(c, kw, "the root must be a plain object schema (\"type\": \"object\")");
    if ((err = node_type(c, in, &ty, &has_null)) != 0)
        return err;
    if (ty == NULL || strcmp(ty, "object") != 0 ||
        (json_object_get(in, "type") == NULL && json_object_get(in, "properties") == NULL))
        return fail(c, "type", "the root must be an object schema (\"type\": \"object\")");
    if (json_object_get(in, "$defs") != NULL && json_object_get(in, "definitions") != NULL)
        return fail(c, "definitions", "cannot be combined with $defs");
    c->defs_kw = json_object_get(in, "$defs") != NULL ? "$defs" : "definitions";
    defs = json_object_get(in, c->defs_kw);
    if (defs != NULL && !json_is_object(defs))
        return fail(c, c->defs_kw, "must be an object of schemas");
    c->defs = defs;

    if ((o = json_pack("{ss}", "type", "object")) == NULL)
        return oom(c);
    if ((err = put_annotations(c, in, o)) != 0 || (err = tr_object(c, in, 0, 0, o)) != 0)
        goto fail;
    if (defs != NULL) {
        if ((odefs = json_object()) == NULL) {
            err = oom(c);
            goto fail;
        }
        for (void *it = json_object_iter(defs); it != NULL; it = json_object_iter_next(defs, it)) {
            const char *name = json_object_iter_key(it);
            size_t len = json_object_iter_key_len(it);
            json_t *d;
            size_t saved = path_push(c, c->defs_kw, strlen(c->defs_kw));
            path_push(c, name, len);
            err = add_chars(c, NULL, name, len);
            path_pop(c, saved);
            if (err != 0)
                goto fail;
            /* A definition is translated as it is written (not nullable):
             * a nullable reference to it is wrapped where it is used. */
            err = tr_child(c, json_object_iter_value(it), c->defs_kw, name, len, 2, 0, 0, &d);
            if (err != 0)
                goto fail;
            if (json_object_setn_new(odefs, name, len, d) != 0) {
                err = oom(c);
                goto fail;
            }
        }
        err = put(c, o, c->defs_kw, odefs);
        odefs = NULL;
        if (err != 0)
            goto fail;
    }
    *out = o;
    return 0;
fail:
    json_decref(odefs);
    json_decref(o);
    return err;
}

int sl_jschema_openai(const json_t *record_schema, json_t **out, char *err, size_t errlen)
{
    jctx_t c;
    memset(&c, 0, sizeof c);
    c.err = err;
    c.errlen = errlen;
    if (errlen > 0)
        err[0] = '\0';
    *out = NULL;
    if (record_schema == NULL)
        return fail(&c, NULL, "no record schema");
    return tr_root(&c, record_schema, out);
}

int sl_jschema_check(const json_t *record_schema, char *err, size_t errlen)
{
    json_t *out;
    int rc = sl_jschema_openai(record_schema, &out, err, errlen);
    json_decref(out);
    return rc;
}
