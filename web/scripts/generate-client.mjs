// Generate src/lib/api/schema.d.ts (TypeScript types for every API path) from src/lib/api/openapi.json.
// `npm run generate:client` writes it; src/lib/api/client.test.ts fails when the committed file is stale.
import { readFile, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import openapiTS, { astToString } from 'openapi-typescript'

export const SPEC = fileURLToPath(new URL('../src/lib/api/openapi.json', import.meta.url))
export const OUTPUT = fileURLToPath(new URL('../src/lib/api/schema.d.ts', import.meta.url))

const HEADER = `/**
 * Generated from openapi.json by web/scripts/generate-client.mjs (\`make web-client\`). Do not edit.
 */

`

/**
 * Pydantic schemas embedded by hand in a route's `openapi_extra` carry their own `$defs` with refs like
 * `#/$defs/Name`, which do not resolve from the document's root. Move them into `components/schemas`.
 */
/** @param {any} spec */
export function hoistDefs(spec) {
  const schemas = ((spec.components ??= {}).schemas ??= {})
  /** @param {any} node */
  const visit = (node) => {
    if (Array.isArray(node)) return node.forEach(visit)
    if (!node || typeof node !== 'object') return
    if (node.$defs && typeof node.$defs === 'object') {
      for (const [name, schema] of Object.entries(node.$defs)) schemas[name] ??= schema
      delete node.$defs
    }
    if (typeof node.$ref === 'string' && node.$ref.startsWith('#/$defs/')) {
      node.$ref = node.$ref.replace('#/$defs/', '#/components/schemas/')
    }
    Object.values(node).forEach(visit)
  }
  visit(spec)
  return spec
}

export async function generate() {
  const spec = hoistDefs(JSON.parse(await readFile(SPEC, 'utf8')))
  const ast = await openapiTS(spec)
  return HEADER + astToString(ast)
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  await writeFile(OUTPUT, await generate())
  console.log(`wrote ${OUTPUT}`)
}
