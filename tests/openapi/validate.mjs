// validate.mjs — checks an OpenAPI 3.1 document with a real validator.
//
//   node validate.mjs FILE        exit 0: valid; 1: refused (reasons on stderr);
//                                 2: usage or unreadable file
//
// 1. @apidevtools/swagger-parser validates it: the document against the
//    OpenAPI 3.1 JSON Schema, and every $ref resolves.
// 2. What that schema cannot say, checked here (each a rule of the OpenAPI
//    specification, section 4.8.9 / 4.8.12): every {name} in a path template
//    is declared as a required path parameter of each of its operations, no
//    path parameter is declared that the template lacks, and operationIds are
//    unique.
// On success prints one JSON line: {"ok": true, "paths": N, "operations": M}.
import fs from "node:fs";
import SwaggerParser from "@apidevtools/swagger-parser";

const METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

function semanticErrors(api) {
    const errors = [];
    const ids = new Map();
    let operations = 0;
    for (const [path, item] of Object.entries(api.paths || {})) {
        const inTemplate = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]);
        for (const method of METHODS) {
            const op = item[method];
            if (!op)
                continue;
            operations++;
            const where = `${method.toUpperCase()} ${path}`;
            // operation parameters override path-level ones of the same name and location
            const params = new Map();
            for (const p of [...(item.parameters || []), ...(op.parameters || [])])
                params.set(`${p.in}:${p.name}`, p);
            const declared = [...params.values()].filter((p) => p.in === "path");
            for (const name of inTemplate) {
                const p = declared.find((d) => d.name === name);
                if (!p)
                    errors.push(`${where}: path parameter {${name}} is not declared`);
                else if (p.required !== true)
                    errors.push(`${where}: path parameter {${name}} must be required: true`);
            }
            for (const p of declared)
                if (!inTemplate.includes(p.name))
                    errors.push(`${where}: path parameter "${p.name}" is not in the path`);
            if (op.operationId) {
                if (ids.has(op.operationId))
                    errors.push(`${where}: operationId "${op.operationId}" is also ${ids.get(op.operationId)}'s`);
                else
                    ids.set(op.operationId, where);
            }
        }
    }
    return { errors, operations };
}

async function main() {
    const file = process.argv[2];
    if (!file) {
        console.error("usage: node validate.mjs FILE");
        return 2;
    }
    let doc;
    try {
        doc = JSON.parse(fs.readFileSync(file, "utf8"));
    } catch (e) {
        console.error(`${file}: ${e.message}`);
        return 2;
    }
    if (typeof doc.openapi !== "string" || !doc.openapi.startsWith("3.1.")) {
        console.error(`${file}: not an OpenAPI 3.1 document (openapi: ${JSON.stringify(doc.openapi)})`);
        return 1;
    }
    let api;
    try {
        // validate() dereferences in place: hand it a copy
        api = await SwaggerParser.validate(structuredClone(doc));
    } catch (e) {
        console.error(`${file}: ${e.message}`);
        return 1;
    }
    const { errors, operations } = semanticErrors(api);
    if (errors.length) {
        for (const e of errors)
            console.error(`${file}: ${e}`);
        return 1;
    }
    console.log(JSON.stringify({ ok: true, paths: Object.keys(api.paths || {}).length, operations }));
    return 0;
}

process.exitCode = await main();
