// Ask Voxline for speech from TypeScript: build a request, validate it against
// schemas/request.v1.json (Ajv, JSON Schema 2020-12), produce it (key = request_id, idempotent
// producer), then follow the completions topic until the event whose ce_subject is our
// request_id arrives, and print the audio URI or the failure reason.
//
// Exit status: 0 succeeded, 1 failed (the processor's reason is printed), 2 the request is
// invalid (nothing was sent), 3 timed out or Kafka failed.
import { randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { parseArgs } from 'node:util'

import { Consumer, MessagesStreamModes, Producer, stringDeserializers, stringSerializers } from '@platformatic/kafka'
import { Ajv2020 } from 'ajv/dist/2020.js'
import addFormatsModule from 'ajv-formats'

const EXIT_FAILED = 1
const EXIT_INVALID = 2
const EXIT_TIMEOUT = 3

interface Completion {
  status: 'succeeded' | 'failed'
  audio?: { uri: string }
  reason?: string
  error?: { message: string }
}

const { values: args } = parseArgs({
  options: {
    bootstrap: { type: 'string', default: process.env.KAFKA_BOOTSTRAP_SERVERS ?? '127.0.0.1:9092' },
    requests: { type: 'string', default: process.env.VOXLINE_REQUEST_TOPIC ?? 'tts.requests' },
    completions: { type: 'string', default: process.env.VOXLINE_COMPLETION_TOPIC ?? 'tts.completions' },
    schema: { type: 'string', default: '../../../schemas/request.v1.json' },
    id: { type: 'string', default: `ts-${randomUUID()}` },
    text: { type: 'string', default: 'Hello from TypeScript.' },
    language: { type: 'string' },
    format: { type: 'string' },
    backend: { type: 'string' },
    deadline: { type: 'string' },
    timeout: { type: 'string', default: '120' }
  }
})

function buildRequest (): Record<string, string> {
  const request: Record<string, string> = { request_id: args.id!, text: args.text! }
  for (const field of ['language', 'format', 'backend', 'deadline'] as const) {
    const value = args[field]
    if (value !== undefined) request[field] = value
  }
  return request
}

function validate (request: unknown): string | null {
  const ajv = new Ajv2020({ allowUnionTypes: true })
  // ajv-formats is CommonJS: under ESM its function is the default export's default.
  const addFormats = (addFormatsModule as unknown as { default: (ajv: Ajv2020) => Ajv2020 }).default
  addFormats(ajv) // deadline must be a real date-time
  const check = ajv.compile(JSON.parse(readFileSync(args.schema!, 'utf8')))
  if (check(request)) return null
  return (check.errors ?? []).map(e => `${e.instancePath || '/'} ${e.message ?? ''}`).join('; ')
}

async function main (): Promise<number> {
  const request = buildRequest()
  const problem = validate(request)
  if (problem !== null) {
    console.error(`invalid request, not sent: ${problem}`)
    return EXIT_INVALID
  }
  const id = request.request_id
  const brokers = args.bootstrap!.split(',')
  const producer = new Producer({
    clientId: 'voxline-example-ts',
    bootstrapBrokers: brokers,
    serializers: stringSerializers,
    idempotent: true // requires acks = all, the default for idempotent producers
  })
  const consumer = new Consumer({
    clientId: 'voxline-example-ts',
    groupId: `voxline-example-ts-${randomUUID()}`,
    bootstrapBrokers: brokers,
    deserializers: stringDeserializers
  })
  const timer = setTimeout(() => {
    console.error(`timed out waiting for the completion event of ${id}`)
    process.exit(EXIT_TIMEOUT)
  }, Number(args.timeout) * 1000)
  try {
    // Where each completions partition ends now: our event can only come after that.
    const ends = await consumer.listOffsets({ topics: [args.completions!] })
    const offsets = (ends.get(args.completions!) ?? []).map((offset, partition) => ({
      topic: args.completions!,
      partition,
      offset
    }))
    await producer.send({
      messages: [{ topic: args.requests!, key: id, value: JSON.stringify(request) }]
    })
    console.error(`sent ${id} to ${args.requests}; waiting for its completion event`)
    const stream = await consumer.consume({
      topics: [args.completions!],
      mode: MessagesStreamModes.MANUAL,
      offsets,
      autocommit: false
    })
    for await (const message of stream) {
      if (message.headers.get('ce_subject') !== id) continue
      const event = JSON.parse(message.value) as Completion
      if (event.status === 'succeeded') {
        console.log(event.audio?.uri)
        return 0
      }
      console.log(`failed: ${event.reason}: ${event.error?.message}`)
      return EXIT_FAILED
    }
    return EXIT_TIMEOUT
  } catch (error) {
    console.error(`kafka: ${String(error)}`)
    return EXIT_TIMEOUT
  } finally {
    clearTimeout(timer)
    await producer.close()
    await consumer.close(true)
  }
}

process.exitCode = await main()
