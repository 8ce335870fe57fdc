// Lists the server's services and calls it knowing nothing but what reflection tells: no .proto
// file of ours is read. Uses @grpc/grpc-js and grpc-js-reflection-client (npm).
// Usage: node reflection_client.js HOST:PORT MODEL_DIR OUTPUT_DIR   (exit 0 pass, 1 fail)
'use strict';
const grpc = require('@grpc/grpc-js');
const { GrpcReflection } = require('grpc-js-reflection-client');

function fail(msg) {
  console.error('FAIL: ' + msg);
  process.exit(1);
}

(async () => {
  const [address, modelDir, outputDir] = process.argv.slice(2);
  if (!outputDir) fail('usage: reflection_client.js HOST:PORT MODEL_DIR OUTPUT_DIR');
  const client = new GrpcReflection(address, grpc.ChannelCredentials.createInsecure());
  const services = await client.listServices();
  console.log('services: ' + JSON.stringify(services));
  for (const s of ['gptq.v1.QuantizationService', 'grpc.health.v1.Health']) {
    if (!services.includes(s)) fail('service ' + s + ' not listed');
  }
  const methods = (await client.listMethods('gptq.v1.QuantizationService')).map((m) => m.name);
  console.log('methods: ' + JSON.stringify(methods));
  for (const m of ['CreateJob', 'GetJob', 'ListJobs', 'CancelJob', 'DeleteJob', 'WatchJob']) {
    if (!methods.includes(m)) fail('method ' + m + ' not listed');
  }
  // Build a client from the reflected descriptor and make real calls with it.
  const descriptor = await client.getDescriptorBySymbol('gptq.v1.QuantizationService');
  const pkg = descriptor.getPackageObject(
    { keepCase: true, enums: String, longs: String, arrays: true, defaults: true });
  const Service = pkg.gptq.v1.QuantizationService;
  const stub = new Service(address, grpc.credentials.createInsecure());
  // Descriptors from reflection carry map fields as repeated key/value entries.
  const entries = (obj) => Object.entries(obj).map(([key, value]) => ({ key, value }));
  const label = (labels, key) => (Array.isArray(labels)
    ? (labels.find((e) => e.key === key) || {}).value : (labels || {})[key]);
  const call = (method, req) => new Promise((resolve, reject) =>
    stub[method](req, (err, resp) => (err ? reject(err) : resolve(resp))));
  const job = await call('CreateJob', {
    spec: { model_uri: modelDir, output_uri: outputDir, bits: 4 },
    labels: entries({ client: 'node-reflection' }),
  });
  if (!job.id || job.state !== 'JOB_STATE_QUEUED') fail('CreateJob returned ' + JSON.stringify(job));
  const got = await call('GetJob', { id: job.id });
  if (got.id !== job.id || got.spec.bits !== 4 || label(got.labels, 'client') !== 'node-reflection') {
    fail('GetJob returned ' + JSON.stringify(got));
  }
  const list = await call('ListJobs', { page_size: 5, label_selector: entries({ client: 'node-reflection' }) });
  if (list.jobs.length !== 1 || list.jobs[0].id !== job.id) {
    fail('ListJobs via reflection returned ' + JSON.stringify(list));
  }
  const cancelled = await call('CancelJob', { id: job.id });
  if (cancelled.state !== 'JOB_STATE_CANCELLED') fail('CancelJob returned ' + JSON.stringify(cancelled));
  const err = await new Promise((resolve) =>
    stub.GetJob({ id: 'no-such-job' }, (e) => resolve(e)));
  if (!err || err.code !== grpc.status.NOT_FOUND) {
    fail('GetJob(no-such-job) should be NOT_FOUND, got ' + JSON.stringify(err));
  }
  console.log('PASS: reflection lists ' + services.length + ' services; Create/Get/List/Cancel ' +
              'work from the reflected schema');
  process.exit(0);
})().catch((e) => fail(e && e.stack ? e.stack : String(e)));
