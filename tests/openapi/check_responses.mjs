// check_responses.mjs — checks real answers of a server against the schemas of
// an OpenAPI 3.1 document (JSON Schema 2020-12, by ajv).
//
//   node check_responses.mjs DOC SAMPLES    exit 0: all match; 1: some do not
//                                           (one line each on stderr); 2: usage
//
// SAMPLES is a JSON file: {"relax": {"<Schema>": ["field", ...]},
// "samples": [{"schema": "<Schema>", "what": "GET /v1/...", "value": <JSON>}]}.
// "relax" drops those names from the `required` list of that component
// schema: fields the document promises that a branch still being built will
// add (tests/blackbox/test_openapi.py, PENDING_FIELDS).
import fs from "node:fs";
import Ajv2020 from "ajv/dist/2020.js";

function main() {
    const [docPath, samplesPath] = process.argv.slice(2);
    if (!docPath || !samplesPath) {
        console.error("usage: node check_responses.mjs DOC SAMPLES");
        return 2;
    }
    const doc = JSON.parse(fs.readFileSync(docPath, "utf8"));
    const { relax = {}, samples = [] } = JSON.parse(fs.readFileSync(samplesPath, "utf8"));
    const schemas = doc.components?.schemas || {};
    for (const [name, fields] of Object.entries(relax)) {
        const s = schemas[name];
        if (!s) {
            console.error(`relax: no schema ${name} in the document`);
            return 1;
        }
        if (Array.isArray(s.required))
            s.required = s.required.filter((f) => !fields.includes(f));
    }
    // The components as one schema resource, so "#/components/schemas/X" resolves.
    const ajv = new Ajv2020({ strict: false, validateFormats: false, allErrors: true });
    ajv.addSchema({ $id: "openapi.json", components: { schemas } });
    let bad = 0;
    for (const { schema, what, value } of samples) {
        const validate = ajv.getSchema(`openapi.json#/components/schemas/${schema}`);
        if (!validate) {
            console.error(`${what}: no schema ${schema} in the document`);
            bad++;
            continue;
        }
        if (!validate(value)) {
            bad++;
            for (const e of validate.errors)
                console.error(`${what} (${schema}): ${e.instancePath || "/"} ${e.message}`);
        }
    }
    console.log(JSON.stringify({ ok: bad === 0, samples: samples.length, failed: bad }));
    return bad ? 1 : 0;
}

process.exitCode = main();
