// Produces and consumes records with KafkaJS for proto-tests/test_clients.py.
//
// Usage: node kafkajs-driver.js produce|consume SPEC.json RESULT.json
//
// Spec and result formats: proto-tests/clients/README.md (shared with the Sarama
// driver). KafkaJS's own log goes to stderr.
'use strict';

const fs = require('fs');
const { Kafka, CompressionTypes, CompressionCodecs, logLevel } = require('kafkajs');
CompressionCodecs[CompressionTypes.Snappy] = require('kafkajs-snappy');

const CODECS = {
  '': CompressionTypes.None,
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
};

function clientError(e) {
  // KafkaJS protocol errors carry the broker's error `type` (e.g. UNKNOWN_SERVER_ERROR);
  // retries wrap the last one as `originalError`.
  let inner = e;
  while (inner && !inner.type && inner.originalError) inner = inner.originalError;
  const code = inner && Number.isInteger(inner.code) ? inner.code : null;
  return { message: String(e && e.message), type: (inner && inner.type) || null, code };
}

function kafka(spec) {
  return new Kafka({
    clientId: 'kafkajs-driver',
    brokers: [spec.bootstrap],
    logLevel: logLevel.WARN,
    retry: { retries: 3, initialRetryTime: 200 },
  });
}

async function produce(spec, res) {
  if (!(spec.compression in CODECS)) throw new Error(`no codec ${spec.compression}`);
  const producer = kafka(spec).producer({
    idempotent: !!spec.idempotent,
    maxInFlightRequests: spec.idempotent ? 1 : 5,
    allowAutoTopicCreation: false,
  });
  await producer.connect();
  try {
    // One send per chunk of records: each chunk becomes one batch per partition.
    for (let i = 0; i < spec.records.length; i += 25) {
      const chunk = spec.records.slice(i, i + 25);
      const meta = await producer.send({
        topic: spec.topic,
        acks: -1,
        compression: CODECS[spec.compression],
        messages: chunk.map((r) => ({
          key: r.key,
          value: r.value,
          partition: r.partition,
          headers: Object.fromEntries(r.headers),
        })),
      });
      // KafkaJS reports the base offset per partition; the chunk's records of a
      // partition follow it in send order.
      const next = new Map(meta.map((m) => [m.partition, Number(m.baseOffset)]));
      for (const r of chunk) {
        const offset = next.get(r.partition);
        next.set(r.partition, offset + 1);
        res.acked.push({ ...r, offset });
      }
    }
  } finally {
    await producer.disconnect();
  }
}

async function consume(spec, res) {
  const consumer = kafka(spec).consumer({
    groupId: spec.group,
    sessionTimeout: 6000,
    heartbeatInterval: 1000,
    maxWaitTimeInMs: 200,
  });
  await consumer.connect();
  try {
    await consumer.subscribe({ topic: spec.topic, fromBeginning: true });
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('timed out')), spec.timeout_ms);
      consumer.on(consumer.events.CRASH, (ev) => {
        clearTimeout(timer);
        reject(ev.payload.error);
      });
      consumer.run({
        eachMessage: async ({ partition, message }) => {
          res.records.push({
            partition,
            offset: Number(message.offset),
            timestamp: Number(message.timestamp),
            key: message.key === null ? null : message.key.toString(),
            value: message.value === null ? null : message.value.toString(),
            headers: Object.entries(message.headers || {}).map(([k, v]) => [k, v.toString()]),
          });
          if (res.records.length >= spec.expected) {
            clearTimeout(timer);
            resolve();
          }
        },
      }).catch(reject);
    });
  } finally {
    await consumer.disconnect();
  }
  res.records.sort((a, b) => a.partition - b.partition);
}

async function main() {
  const [mode, specPath, resultPath] = process.argv.slice(2);
  const spec = JSON.parse(fs.readFileSync(specPath, 'utf8'));
  const res = { acked: [], records: [], errors: [] };
  try {
    if (mode === 'produce') await produce(spec, res);
    else if (mode === 'consume') await consume(spec, res);
    else throw new Error(`unknown mode ${mode}`);
  } catch (e) {
    res.errors.push(clientError(e));
  }
  fs.writeFileSync(resultPath, JSON.stringify(res));
  console.error(`kafkajs-driver ${mode}: ${res.acked.length} acked, ` +
    `${res.records.length} consumed, ${res.errors.length} errors`);
  // A client that failed to connect may keep timers alive: the result is written.
  process.exit(0);
}

main();
