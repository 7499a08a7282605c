// Validates an AsyncAPI document with the AsyncAPI project's own parser (@asyncapi/parser),
// external $refs (the JSON Schemas beside it) resolved from the file's folder.
// Usage: node validate.mjs PATH. Exit 0 when valid (warnings printed), 1 when not.
import { Parser, fromFile } from '@asyncapi/parser'

const path = process.argv[2]
if (!path) {
  console.error('usage: node validate.mjs PATH')
  process.exit(2)
}
const SEVERITY = ['error', 'warning', 'info', 'hint']
const { document, diagnostics } = await fromFile(new Parser(), path).parse()
for (const d of diagnostics) {
  console.error(`${SEVERITY[d.severity]}: ${d.message} at /${d.path.join('/')} (${d.code})`)
}
const errors = diagnostics.filter(d => d.severity === 0)
if (document === undefined || errors.length > 0) {
  console.error(`${path}: not valid AsyncAPI (${errors.length} errors)`)
  process.exit(1)
}
const channels = document.channels().all().map(c => c.address())
console.log(`${path}: valid AsyncAPI ${document.version()}; channels: ${channels.join(', ')}; ` +
  `operations: ${document.operations().length}; messages: ${document.messages().length}`)
