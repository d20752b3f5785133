/* test_jschema.c — core/jschema.c: record schemas in OpenAI's strict form.
 *
 * Exact outputs (compared as compact JSON text, so key order counts), each
 * refused construct with its keyword and path, OpenAI's limits on both sides
 * of the line, and hostile inputs refused fast without deep recursion. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/err.h"
#include "core/jschema.h"

#include "check.h"

static char err[512];

/* The translation of the schema text, as compact JSON text (owned), or NULL (message in err). */
static char *tr(const char *in)
{
    json_error_t jerr;
    json_t *s = json_loads(in, JSON_PRESERVE_ORDER, &jerr), *out = NULL;
    char *text = NULL;
    if (s == NULL) {
        fprintf(stderr, "bad test input: %s: %s\n", jerr.text, in);
        failed++;
        return NULL;
    }
    if (sl_jschema_openai(s, &out, err, sizeof err) == 0) {
        text = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(out);
    } else if (out != NULL) {
        failed++; /* out must be NULL on failure */
    }
    json_decref(s);
    return text;
}

/* in translates to exactly want (compact, in order). */
#define CHECK_TR(in, want)                                                                         \
    do {                                                                                           \
        char *got_ = tr(in);                                                                       \
        CHECK(got_ != NULL && strcmp(got_, want) == 0);                                            \
        if (got_ == NULL || strcmp(got_, want) != 0)                                               \
            fprintf(stderr, "  got:  %s\n  want: %s\n  err:  %s\n", got_ ? got_ : "(refused)",     \
                    want, got_ ? "" : err);                                                        \
        free(got_);                                                                                \
    } while (0)

/* in is refused with a message containing want. */
#define CHECK_REFUSED(in, want)                                                                    \
    do {                                                                                           \
        char *got_ = tr(in);                                                                       \
        CHECK(got_ == NULL && strstr(err, want) != NULL);                                          \
        if (got_ != NULL || strstr(err, want) == NULL)                                             \
            fprintf(stderr, "  input: %s\n  got: %s\n  want message with: %s\n", in,               \
                    got_ ? got_ : err, want);                                                      \
        free(got_);                                                                                \
    } while (0)

#define NS "{\"type\":[\"string\",\"null\"]}"

static void test_root_and_order(void)
{
    /* The root stays a plain object; properties in the schema's order, all
     * required, nullable below the root. */
    CHECK_TR(
        "{\"type\":\"object\",\"properties\":{\"zeta\":{\"type\":\"string\"},"
        "\"alpha\":{\"type\":\"number\"},\"mid\":{\"type\":\"boolean\"}},\"required\":[\"zeta\"]}",
        "{\"type\":\"object\",\"properties\":{\"zeta\":" NS ",\"alpha\":{\"type\":[\"number\","
        "\"null\"]},\"mid\":{\"type\":[\"boolean\",\"null\"]}},\"required\":[\"zeta\",\"alpha\","
        "\"mid\"],\"additionalProperties\":false}");
    /* properties without a type at the root; a nullable root is made plain */
    CHECK_TR("{\"properties\":{\"a\":{}}}",
             "{\"type\":\"object\",\"properties\":{\"a\":" NS "},\"required\":[\"a\"],"
             "\"additionalProperties\":false}");
    CHECK_TR(
        "{\"type\":[\"object\",\"null\"],\"properties\":{}}",
        "{\"type\":\"object\",\"properties\":{},\"required\":[],\"additionalProperties\":false}");
    CHECK_TR(
        "{\"type\":\"object\",\"description\":\"An invoice\",\"additionalProperties\":true}",
        "{\"type\":\"object\",\"description\":\"An invoice\",\"properties\":{},\"required\":[],"
        "\"additionalProperties\":false}");
    /* the default dataset schema */
    CHECK_TR("{\"type\":\"object\",\"properties\":{\"title\":{\"type\":\"string\"},\"total\":"
             "{\"type\":\"number\"}}}",
             "{\"type\":\"object\",\"properties\":{\"title\":" NS
             ",\"total\":{\"type\":[\"number\","
             "\"null\"]}},\"required\":[\"title\",\"total\"],\"additionalProperties\":false}");
}

static void test_nested(void)
{
    /* nested object, array of objects, enum, already nullable, untyped, array without items */
    CHECK_TR(
        "{\"type\":\"object\",\"properties\":{"
        "\"addr\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"}}},"
        "\"lines\":{\"type\":\"array\",\"items\":{\"type\":\"object\",\"properties\":{"
        "\"qty\":{\"type\":\"integer\"}}}},"
        "\"kind\":{\"type\":\"string\",\"enum\":[\"invoice\",\"receipt\"]},"
        "\"maybe\":{\"type\":[\"null\",\"string\"]},"
        "\"free\":{\"description\":\"anything\"},"
        "\"tags\":{\"type\":\"array\"}}}",
        "{\"type\":\"object\",\"properties\":{"
        "\"addr\":{\"type\":[\"object\",\"null\"],\"properties\":{\"city\":" NS "},"
        "\"required\":[\"city\"],\"additionalProperties\":false},"
        "\"lines\":{\"type\":[\"array\",\"null\"],\"items\":{\"type\":\"object\",\"properties\":"
        "{\"qty\":{\"type\":[\"integer\",\"null\"]}},\"required\":[\"qty\"],"
        "\"additionalProperties\":false}},"
        "\"kind\":{\"type\":[\"string\",\"null\"],\"enum\":[\"invoice\",\"receipt\",null]},"
        "\"maybe\":" NS ","
        "\"free\":{\"type\":[\"string\",\"null\"],\"description\":\"anything\"},"
        "\"tags\":{\"type\":[\"array\",\"null\"],\"items\":{\"type\":\"string\"}}},"
        "\"required\":[\"addr\",\"lines\",\"kind\",\"maybe\",\"free\",\"tags\"],"
        "\"additionalProperties\":false}");
    /* untyped enum and const get their values' type; a nullable const is an enum with null */
    CHECK_TR(
        "{\"type\":\"object\",\"properties\":{\"e\":{\"enum\":[1,2.5]},\"c\":{\"const\":\"x\"},"
        "\"m\":{\"enum\":[\"a\",1]}}}",
        "{\"type\":\"object\",\"properties\":{\"e\":{\"type\":[\"number\",\"null\"],\"enum\":"
        "[1,2.5,null]},\"c\":{\"type\":[\"string\",\"null\"],\"enum\":[\"x\",null]},"
        "\"m\":{\"enum\":[\"a\",1,null]}},\"required\":[\"e\",\"c\",\"m\"],"
        "\"additionalProperties\":false}");
    /* anyOf below the root gets a null branch; oneOf is taken as anyOf; branches not nullable */
    CHECK_TR(
        "{\"type\":\"object\",\"properties\":{\"v\":{\"description\":\"d\",\"anyOf\":["
        "{\"type\":\"string\"},{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"number\"}}}]}"
        ","
        "\"w\":{\"oneOf\":[{\"type\":\"integer\"},{\"type\":\"null\"}]}}}",
        "{\"type\":\"object\",\"properties\":{\"v\":{\"description\":\"d\",\"anyOf\":["
        "{\"type\":\"string\"},{\"type\":\"object\",\"properties\":{\"n\":{\"type\":[\"number\","
        "\"null\"]}},\"required\":[\"n\"],\"additionalProperties\":false},{\"type\":\"null\"}]},"
        "\"w\":{\"anyOf\":[{\"type\":\"integer\"},{\"type\":\"null\"}]}},"
        "\"required\":[\"v\",\"w\"],\"additionalProperties\":false}");
    /* $defs and $ref: a nullable ref is wrapped in anyOf; root recursion with "#" */
    CHECK_TR(
        "{\"type\":\"object\",\"properties\":{\"step\":{\"$ref\":\"#/$defs/step\"},"
        "\"steps\":{\"type\":\"array\",\"items\":{\"$ref\":\"#/$defs/step\"}},"
        "\"child\":{\"$ref\":\"#\",\"description\":\"same shape\"}},"
        "\"$defs\":{\"step\":{\"type\":\"object\",\"properties\":{\"x\":{\"type\":\"string\"}}}}}",
        "{\"type\":\"object\",\"properties\":{\"step\":{\"anyOf\":[{\"$ref\":\"#/$defs/step\"},"
        "{\"type\":\"null\"}]},\"steps\":{\"type\":[\"array\",\"null\"],\"items\":{\"$ref\":"
        "\"#/$defs/step\"}},\"child\":{\"description\":\"same shape\",\"anyOf\":[{\"$ref\":\"#\"},"
        "{\"type\":\"null\"}]}},\"required\":[\"step\",\"steps\",\"child\"],"
        "\"additionalProperties\":false,\"$defs\":{\"step\":{\"type\":\"object\",\"properties\":"
        "{\"x\":" NS "},\"required\":[\"x\"],\"additionalProperties\":false}}}");
    CHECK_TR(
        "{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#/definitions/d\"}},"
        "\"definitions\":{\"d\":{\"type\":\"string\"}}}",
        "{\"type\":\"object\",\"properties\":{\"a\":{\"anyOf\":[{\"$ref\":\"#/definitions/d\"},"
        "{\"type\":\"null\"}]}},\"required\":[\"a\"],\"additionalProperties\":false,"
        "\"definitions\":{\"d\":{\"type\":\"string\"}}}");
}

static void test_dropped_and_kept_keywords(void)
{
    CHECK_TR(
        "{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\",\"$id\":\"x\","
        "\"type\":\"object\",\"minProperties\":1,\"title\":\"T\",\"properties\":{"
        "\"s\":{\"type\":\"string\",\"minLength\":1,\"maxLength\":9,\"pattern\":\"^[A-Z]+$\","
        "\"format\":\"date\",\"default\":\"A\",\"examples\":[\"B\"],\"x-ui\":{\"w\":1}},"
        "\"u\":{\"type\":\"string\",\"format\":\"uri\"},"
        "\"n\":{\"type\":\"number\",\"minimum\":0,\"exclusiveMaximum\":100,\"multipleOf\":0.01,"
        "\"pattern\":\"dropped: not a string keyword\"},"
        "\"b\":{\"type\":\"integer\",\"maximum\":5,\"exclusiveMinimum\":true},"
        "\"l\":{\"type\":\"array\",\"items\":{\"type\":\"string\"},\"minItems\":1,\"maxItems\":3,"
        "\"uniqueItems\":true,\"contains\":{\"const\":1}}}}",
        "{\"type\":\"object\",\"title\":\"T\",\"properties\":{"
        "\"s\":{\"type\":[\"string\",\"null\"],\"pattern\":\"^[A-Z]+$\",\"format\":\"date\"},"
        "\"u\":" NS ","
        "\"n\":{\"type\":[\"number\",\"null\"],\"multipleOf\":0.01,\"exclusiveMaximum\":100,"
        "\"minimum\":0},"
        "\"b\":{\"type\":[\"integer\",\"null\"],\"maximum\":5},"
        "\"l\":{\"type\":[\"array\",\"null\"],\"items\":{\"type\":\"string\"},\"minItems\":1,"
        "\"maxItems\":3}},\"required\":[\"s\",\"u\",\"n\",\"b\",\"l\"],"
        "\"additionalProperties\":false}");
    /* unevaluatedProperties: false says nothing new and goes */
    CHECK_TR(
        "{\"type\":\"object\",\"unevaluatedProperties\":false,\"properties\":{}}",
        "{\"type\":\"object\",\"properties\":{},\"required\":[],\"additionalProperties\":false}");
}

#define OBJ(props) "{\"type\":\"object\",\"properties\":{" props "}}"

static void test_refused(void)
{
    CHECK_REFUSED(
        OBJ("\"items\":{\"type\":\"array\",\"items\":{\"allOf\":[{\"type\":\"string\"}]}}"),
        "\"allOf\" at /properties/items/items: not supported by OpenAI structured outputs");
    CHECK_REFUSED(OBJ("\"a\":{\"not\":{\"type\":\"string\"}}"), "\"not\" at /properties/a:");
    CHECK_REFUSED(OBJ("\"a\":{\"type\":\"string\",\"if\":{}}"), "\"if\" at /properties/a:");
    CHECK_REFUSED(OBJ("\"a\":{\"type\":\"string\",\"then\":{}}"), "\"then\" at /properties/a:");
    CHECK_REFUSED(OBJ("\"a\":{\"type\":\"string\",\"else\":{}}"), "\"else\" at /properties/a:");
    CHECK_REFUSED(OBJ("\"o\":{\"type\":\"object\",\"patternProperties\":{\"^x\":{}}}"),
                  "\"patternProperties\" at /properties/o:");
    CHECK_REFUSED(OBJ("\"o\":{\"type\":\"object\",\"dependentSchemas\":{}}"),
                  "\"dependentSchemas\" at /properties/o:");
    CHECK_REFUSED(OBJ("\"t\":{\"type\":\"array\",\"prefixItems\":[{\"type\":\"string\"}]}"),
                  "\"prefixItems\" at /properties/t:");
    CHECK_REFUSED(OBJ("\"t\":{\"type\":\"array\",\"items\":[{\"type\":\"string\"}]}"),
                  "\"items\" at /properties/t: a list of item schemas (a tuple)");
    CHECK_REFUSED(OBJ("\"o\":{\"type\":\"object\",\"additionalProperties\":{\"type\":\"string\"}}"),
                  "\"additionalProperties\" at /properties/o:");
    CHECK_REFUSED(OBJ("\"o\":{\"type\":\"object\",\"unevaluatedProperties\":{}}"),
                  "\"unevaluatedProperties\" at /properties/o:");
    CHECK_REFUSED("{\"type\":\"object\",\"allOf\":[]}", "\"allOf\" at /:");
    /* the root */
    CHECK_REFUSED("{\"anyOf\":[{\"type\":\"object\",\"properties\":{}}]}",
                  "\"anyOf\" at /: the root");
    CHECK_REFUSED("{\"type\":\"string\"}", "\"type\" at /: the root must be an object schema");
    CHECK_REFUSED("{\"type\":\"null\"}", "\"type\" at /: the root must be an object schema");
    CHECK_REFUSED("{}", "\"type\" at /: the root must be an object schema");
    CHECK_REFUSED("[]", "at /: the record schema must be a JSON object");
    CHECK_REFUSED("{\"$ref\":\"#/$defs/r\",\"$defs\":{\"r\":{\"type\":\"object\"}}}",
                  "\"$ref\" at /: the root");
    /* nodes and types */
    CHECK_REFUSED(OBJ("\"a\":5"), "at /properties/a: a schema must be a JSON object");
    CHECK_REFUSED(OBJ("\"a\":true"), "at /properties/a: a schema must be a JSON object");
    CHECK_REFUSED(OBJ("\"a\":{\"type\":\"date\"}"),
                  "\"type\" at /properties/a: unknown type \"date\"");
    CHECK_REFUSED(OBJ("\"a\":{\"type\":[\"string\",\"number\"]}"),
                  "\"type\" at /properties/a: more than one type besides \"null\"");
    CHECK_REFUSED(OBJ("\"a\":{\"type\":[]}"), "\"type\" at /properties/a:");
    CHECK_REFUSED(OBJ("\"a\":{\"type\":\"string\",\"enum\":[\"x\",3]}"),
                  "\"enum\" at /properties/a: a value does not match the type \"string\"");
    CHECK_REFUSED(OBJ("\"a\":{\"enum\":[{\"x\":1}]}"), "\"enum\" at /properties/a: only strings");
    CHECK_REFUSED(OBJ("\"a\":{\"enum\":[]}"),
                  "\"enum\" at /properties/a: must be a non-empty array");
    CHECK_REFUSED(OBJ("\"a\":{\"type\":\"string\",\"enum\":[\"x\"],\"const\":\"x\"}"),
                  "\"const\" at /properties/a: cannot be combined with enum");
    CHECK_REFUSED(OBJ("\"a\":{\"type\":\"string\",\"anyOf\":[{\"type\":\"string\"}]}"),
                  "\"type\" at /properties/a: cannot be combined with anyOf");
    CHECK_REFUSED(
        OBJ("\"a\":{\"anyOf\":[{\"type\":\"string\"}],\"oneOf\":[{\"type\":\"string\"}]}"),
        "\"oneOf\" at /properties/a: cannot be combined with anyOf");
    CHECK_REFUSED(OBJ("\"a\":{\"anyOf\":[]}"), "\"anyOf\" at /properties/a: must be a non-empty");
    CHECK_REFUSED(OBJ("\"a\":{\"anyOf\":[{\"type\":\"string\"},{\"allOf\":[]}]}"),
                  "\"allOf\" at /properties/a/anyOf/1:");
    CHECK_REFUSED(OBJ("\"a\":{\"$ref\":\"#/$defs/missing\"}"), "\"$ref\" at /properties/a: only");
    CHECK_REFUSED("{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#/$defs/d/x\"}},"
                  "\"$defs\":{\"d/x\":{\"type\":\"string\"}}}",
                  "\"$ref\" at /properties/a: only");
    CHECK_REFUSED(OBJ("\"a\":{\"$ref\":\"https://example.com/s.json\"}"),
                  "\"$ref\" at /properties/a:");
    CHECK_REFUSED(OBJ("\"a\":{\"$ref\":\"#\",\"type\":\"object\"}"),
                  "\"type\" at /properties/a: cannot be combined with $ref");
    CHECK_REFUSED("{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#/definitions/d\"}},"
                  "\"$defs\":{\"d\":{\"type\":\"string\"}}}",
                  "\"$ref\" at /properties/a:");
    CHECK_REFUSED(OBJ("\"a\":{\"type\":\"object\",\"$defs\":{}}"),
                  "\"$defs\" at /properties/a: definitions are only supported at the root");
    CHECK_REFUSED("{\"type\":\"object\",\"$defs\":{\"d\":{\"not\":{}}}}", "\"not\" at /$defs/d:");
    CHECK_REFUSED(OBJ("\"l\":{\"type\":\"array\",\"minItems\":-1}"),
                  "\"minItems\" at /properties/l: must be a non-negative integer");
    CHECK_REFUSED("{\"type\":\"object\",\"properties\":[]}",
                  "\"properties\" at /: must be an object");
    /* a path too long for the message is cut, and says so */
    {
        char name[400], in[600];
        memset(name, 'n', sizeof name - 1);
        name[sizeof name - 1] = '\0';
        snprintf(in, sizeof in, OBJ("\"%s\":{\"not\":{}}"), name);
        CHECK_REFUSED(in, "\"not\" at /properties/nnnn");
        CHECK(strstr(err, "n...: not supported") != NULL);
    }
    /* JSON Pointer escaping in the path */
    CHECK_REFUSED(OBJ("\"a/b~c\":{\"not\":{}}"), "\"not\" at /properties/a~1b~0c:");
}

/* {"type":"object","properties":{"p":{... n levels ...}}} */
static char *nested_objects(int n)
{
    size_t cap = (size_t)n * 64 + 64, len = 0;
    char *s = malloc(cap);
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(s + len, cap - len, "{\"type\":\"object\",\"properties\":{\"p\":");
    len += (size_t)snprintf(s + len, cap - len, "{\"type\":\"string\"}");
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(s + len, cap - len, "}}");
    return s;
}

/* An object with n properties p0..p<n-1> of `each` (a schema text). */
static char *many_props(int n, const char *each)
{
    size_t cap = (size_t)n * (strlen(each) + 16) + 64, len = 0;
    char *s = malloc(cap);
    len += (size_t)snprintf(s + len, cap - len, "{\"type\":\"object\",\"properties\":{");
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(s + len, cap - len, "%s\"p%d\":%s", i ? "," : "", i, each);
    snprintf(s + len, cap - len, "}}");
    return s;
}

/* {"type":"object","properties":{"e":{"type":"string","enum":[n strings of width w]}}} */
static char *string_enum(int n, int w)
{
    size_t cap = (size_t)n * ((size_t)w + 4) + 128, len = 0;
    char *s = malloc(cap);
    len += (size_t)snprintf(
        s + len, cap - len,
        "{\"type\":\"object\",\"properties\":{\"e\":{\"type\":\"string\",\"enum\":[");
    for (int i = 0; i < n; i++)
        len += (size_t)snprintf(s + len, cap - len, "%s\"%0*d\"", i ? "," : "", w, i);
    snprintf(s + len, cap - len, "]}}}");
    return s;
}

static int accepted(char *in)
{
    char *out = tr(in);
    int ok = out != NULL;
    free(out);
    free(in);
    return ok;
}

static int refused_with(char *in, const char *want)
{
    char *out = tr(in);
    int ok = out == NULL && strstr(err, want) != NULL;
    if (!ok)
        fprintf(stderr, "  want refusal with: %s\n  got: %s\n", want, out ? "accepted" : err);
    free(out);
    free(in);
    return ok;
}

/* A translation is a fixed point: translating it again gives it back (found
 * by fuzz_jschema: a "null"-only type with an enum lost its type, which the
 * second pass then inferred from the values). */
static void test_fixed_point(void)
{
    static const char want[] =
        "{\"type\":\"object\",\"properties\":{\"n\":{\"type\":[\"string\",\"null\"],"
        "\"enum\":[\"x\",null]}},\"required\":[\"n\"],\"additionalProperties\":false}";
    CHECK_TR("{\"properties\":{\"n\":{\"type\":[\"null\"],\"enum\":[\"x\",null]}}}", want);
    CHECK_TR("{\"properties\":{\"n\":{\"type\":\"null\",\"enum\":[\"x\",null]}}}", want);
    CHECK_TR(want, want);
}

static void test_limits(void)
{
    /* 10 levels of objects (the root is 1), not 11 */
    CHECK(accepted(nested_objects(10)));
    CHECK(refused_with(nested_objects(11), "objects nested more than 10 levels deep"));
    CHECK(refused_with(nested_objects(11), "at /properties/p/properties/p/properties/p"));

    /* 5000 object properties in all, counted across nesting */
    CHECK(accepted(many_props(5000, "{\"type\":\"string\"}")));
    CHECK(refused_with(many_props(5001, "{\"type\":\"string\"}"),
                       "\"properties\" at /: more than 5000 object properties"));
    CHECK(refused_with(many_props(2501, "{\"type\":\"object\",\"properties\":{\"x\":{}}}"),
                       "more than 5000 object properties"));

    /* 1000 enum values across the schema, counting the null added below the root */
    CHECK(accepted(many_props(333, "{\"enum\":[1,2]}"))); /* 333 * 3 = 999 */
    CHECK(accepted(many_props(500, "{\"enum\":[1,null]}")));
    CHECK(refused_with(many_props(334, "{\"enum\":[1,2]}"), "more than 1000 enum values"));
    CHECK(accepted(string_enum(999, 3)));
    CHECK(refused_with(string_enum(1000, 3),
                       "\"enum\" at /properties/e: more than 1000 enum values"));

    /* more than 250 string values: at most 15,000 characters */
    CHECK(accepted(string_enum(249, 100))); /* 24,900 chars, but 249 + null: 250 values */
    CHECK(refused_with(string_enum(250, 100), "an enum of more than 250")); /* + null: 251 */
    CHECK(accepted(string_enum(300, 49)));                                  /* 14,700 */
    CHECK(
        refused_with(string_enum(300, 51), "\"enum\" at /properties/e: an enum of more than 250"));

    /* 120,000 characters of property names, definition names, enum and const strings */
    {
        size_t n = 60001;
        char *name = malloc(n + 1);
        memset(name, 'k', n);
        name[n] = '\0';
        size_t cap = 2 * n + 128;
        char *s = malloc(cap);
        snprintf(s, cap, "{\"type\":\"object\",\"properties\":{\"%s\":{},\"%.*s\":{}}}", name,
                 (int)n - 2, name);
        CHECK(accepted(s)); /* 60,001 + 59,999 = 120,000 */
        s = malloc(cap);
        snprintf(s, cap, "{\"type\":\"object\",\"properties\":{\"%s\":{},\"%.*sx\":{}}}", name,
                 (int)n - 1, name);
        CHECK(refused_with(s, "add up to more than 120000 characters"));
        /* code points, not bytes: 60,000 two-byte characters are 60,000 */
        s = malloc(4 * n + 128);
        size_t len = (size_t)snprintf(s, 4 * n + 128, "{\"type\":\"object\",\"properties\":{\"");
        for (size_t i = 0; i < 60000; i++) {
            s[len++] = (char)0xC3;
            s[len++] = (char)0xA9;
        }
        snprintf(s + len, 4 * n + 128 - len, "\":{\"const\":\"%.*s\"}}}", 59990, name);
        CHECK(accepted(s)); /* 60,000 + 59,990 (+ the enum's null, no characters) */
        free(name);
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void test_hostile(void)
{
    double t0;
    /* 2000 nested items (jansson's parser stops at 2048): refused at the depth limit, fast */
    {
        int n = 2000;
        size_t cap = (size_t)n * 32 + 128, len = 0;
        char *s = malloc(cap);
        len += (size_t)snprintf(s + len, cap - len, "{\"type\":\"object\",\"properties\":{\"a\":");
        for (int i = 0; i < n; i++)
            len += (size_t)snprintf(s + len, cap - len, "{\"type\":\"array\",\"items\":");
        len += (size_t)snprintf(s + len, cap - len, "{}");
        for (int i = 0; i < n; i++)
            len += (size_t)snprintf(s + len, cap - len, "}");
        snprintf(s + len, cap - len, "}}");
        t0 = now_s();
        CHECK(refused_with(s, "nested more than 48 JSON levels deep"));
        CHECK(now_s() - t0 < 1.0);
    }
    /* a far deeper chain built in memory (not parsable as text): same, without recursing */
    {
        int n = 20000;
        json_t *leaf = json_object(), *node = leaf, *root;
        char *out;
        for (int i = 0; i < n; i++)
            node =
                json_pack("{sss{so}}", "type", "array", "items", "anyOf", json_pack("[o]", node));
        root = json_pack("{sss{so}}", "type", "object", "properties", "a", node);
        t0 = now_s();
        json_t *res = NULL;
        CHECK(sl_jschema_openai(root, &res, err, sizeof err) == SL_EINVAL && res == NULL);
        CHECK(strstr(err, "nested more than 48 JSON levels deep") != NULL);
        CHECK(now_s() - t0 < 1.0);
        CHECK(sl_jschema_check(root, err, sizeof err) == SL_EINVAL);
        /* free iteratively: jansson frees recursively */
        for (json_t *cur = root; cur != NULL;) {
            json_t *next = NULL;
            json_t *props = json_object_get(cur, "properties");
            json_t *items = json_object_get(cur, "items");
            if (props != NULL)
                next = json_object_get(props, "a");
            else if (items != NULL)
                next = json_array_get(json_object_get(items, "anyOf"), 0);
            json_incref(next);
            json_decref(cur);
            cur = next;
        }
        (void)out;
        (void)leaf;
    }
    /* deep values under dropped keywords are never walked */
    {
        int n = 2000;
        size_t cap = (size_t)n * 2 + 128, len = 0;
        char *s = malloc(cap);
        len += (size_t)snprintf(s + len, cap - len,
                                "{\"type\":\"object\",\"properties\":{\"a\":{\"default\":");
        for (int i = 0; i < n; i++)
            s[len++] = '[';
        for (int i = 0; i < n; i++)
            s[len++] = ']';
        snprintf(s + len, cap - len, "}}}");
        CHECK(accepted(s));
    }
    /* a wide hostile input: 5000 properties with 1000 enum values, linear time */
    t0 = now_s();
    CHECK(refused_with(many_props(5000, "{\"enum\":[1]}"), "more than 1000 enum values"));
    CHECK(now_s() - t0 < 1.0);
}

static void test_api(void)
{
    json_t *out = (json_t *)1;
    char small[8];
    CHECK(sl_jschema_openai(NULL, &out, err, sizeof err) == SL_EINVAL && out == NULL);
    json_t *s = json_loads("{\"type\":\"object\",\"properties\":{\"a\":{\"not\":{}}}}", 0, NULL);
    CHECK(sl_jschema_check(s, small, sizeof small) == SL_EINVAL);
    CHECK(memchr(small, '\0', sizeof small) != NULL); /* cut, terminated */
    CHECK(sl_jschema_check(s, NULL, 0) == SL_EINVAL);
    json_decref(s);
    /* the input is not modified */
    s = json_loads(
        "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"string\",\"minLength\":1}}}", 0,
        NULL);
    json_t *copy = json_deep_copy(s);
    CHECK(sl_jschema_openai(s, &out, err, sizeof err) == 0);
    CHECK(json_equal(s, copy));
    json_decref(out);
    json_decref(copy);
    json_decref(s);
}

int main(void)
{
    test_root_and_order();
    test_nested();
    test_dropped_and_kept_keywords();
    test_refused();
    test_fixed_point();
    test_limits();
    test_hostile();
    test_api();
    return check_summary();
}
