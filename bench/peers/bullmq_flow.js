// BullMQ's flows (FlowProducer) for the workflow benchmark (scripts/bench-workflows).
//
//   node bullmq_flow.js worker RECORDS_DIR READY_FILE
//   node bullmq_flow.js submit chain|fan N
//
// `bullmq` is resolved through NODE_PATH (the peers' install:
// NODE_PATH=/tmp/tandem-peers/bullmq/node_modules). The Redis port is
// BENCH_REDIS_PORT. Every job is a no-op whose handler appends
// "INDEX DONE_US\n" to RECORDS_DIR/<pid>.rec (one write(2)).
//
// chain N: N no-op jobs, each the only child of the next (a flow runs a
//   parent once its children are done: index 0 is the deepest child, runs
//   first; index N-1 is the flow's top, runs last).
// fan N: N no-op children under one parent (index N, the fan-in, runs
//   last). A BullMQ flow is a tree whose children run before their parent,
//   so there is no fan-out from one root job: the N children are ready at
//   once, which favours BullMQ against Tandem's and Celery's root -> N -> 1.
// submit prints {"t0_us", "submitted_us"} as JSON: before the add call,
// and when it returned.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { performance } = require('node:perf_hooks');
const { Worker, FlowProducer } = require('bullmq');

const connection = { host: '127.0.0.1', port: Number(process.env.BENCH_REDIS_PORT || 6390) };
const QUEUE = 'flowbench';

function nowUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

async function worker(dir, ready) {
  const fd = fs.openSync(path.join(dir, `${process.pid}.rec`), 'a');
  const w = new Worker(QUEUE, async (job) => {
    fs.writeSync(fd, `${job.data.i} ${nowUs()}\n`);
  }, { connection });
  w.on('error', (e) => console.error('worker error', e));
  await w.waitUntilReady();
  fs.writeFileSync(ready, 'ready\n');
  const stop = async () => { await w.close(); process.exit(0); };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

function chain(n) {
  let node = { name: 'noop', queueName: QUEUE, data: { i: 0 } };
  for (let i = 1; i < n; i++) {
    node = { name: 'noop', queueName: QUEUE, data: { i }, children: [node] };
  }
  return node;
}

function fan(n) {
  const children = [];
  for (let i = 0; i < n; i++) children.push({ name: 'noop', queueName: QUEUE, data: { i } });
  return { name: 'noop', queueName: QUEUE, data: { i: n }, children };
}

async function submit(shape, n) {
  if (!['chain', 'fan'].includes(shape) || !(n > 0)) {
    throw new Error(`submit: shape must be chain or fan and N > 0, got ${shape} ${n}`);
  }
  const flow = new FlowProducer({ connection });
  const tree = shape === 'chain' ? chain(n) : fan(n);
  // Connected before the clock starts, as Tandem's producer is.
  await flow.waitUntilReady();
  const t0 = nowUs();
  await flow.add(tree);
  const submitted = nowUs();
  await flow.close();
  console.log(JSON.stringify({ t0_us: t0, submitted_us: submitted }));
}

const [mode, a, b] = process.argv.slice(2);
if (mode === 'worker') {
  worker(a, b).catch((e) => { console.error(e); process.exit(1); });
} else if (mode === 'submit') {
  submit(a, Number(b)).then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
} else {
  console.error('usage: bullmq_flow.js worker RECORDS_DIR READY_FILE | submit chain|fan N');
  process.exit(2);
}
