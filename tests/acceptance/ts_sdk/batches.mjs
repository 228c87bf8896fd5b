// The official TypeScript SDK against a running msgbatch: create, retrieve, list, cancel, delete and
// results, standard and beta. Prints one JSON object with what it saw; tests/test_ts_sdk.py checks it.
// Usage: MSGBATCH_URL=http://127.0.0.1:8787 MSGBATCH_KEY=k node batches.mjs
import Anthropic from '@anthropic-ai/sdk';

const client = new Anthropic({
  apiKey: process.env.MSGBATCH_KEY,
  baseURL: process.env.MSGBATCH_URL,
  maxRetries: 0,
});
const MODEL = 'claude-sonnet-4-5-20250929';
const SCHEMA = {
  type: 'object',
  properties: { city: { type: 'string' }, population: { type: 'integer', minimum: 0 } },
  required: ['city', 'population'],
  additionalProperties: false,
};
const params = (text, extra = {}) => ({
  model: MODEL,
  max_tokens: 128,
  messages: [{ role: 'user', content: text }],
  ...extra,
});
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitEnded(batches, id) {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const batch = await batches.retrieve(id);
    if (batch.processing_status === 'ended') return batch;
    if (Date.now() > deadline) throw new Error(`batch ${id} did not end`);
    await sleep(50);
  }
}

async function allResults(batches, id) {
  const lines = [];
  for await (const line of await batches.results(id)) lines.push(line);
  return lines;
}

const out = {};

// create -> retrieve until ended -> results
const created = await client.messages.batches.create({
  requests: [
    { custom_id: 'plain', params: params('What is the capital of France?') },
    {
      custom_id: 'system',
      params: params('', {
        messages: [
          { role: 'user', content: 'Hello' },
          { role: 'system', content: 'Answer in French.' },
          { role: 'user', content: 'Why?' },
        ],
      }),
    },
    {
      custom_id: 'structured',
      params: params('Extract the city', { output_config: { format: { type: 'json_schema', schema: SCHEMA } } }),
    },
  ],
});
out.created = created;
out.ended = await waitEnded(client.messages.batches, created.id);
out.results = await allResults(client.messages.batches, created.id);

// list, auto-paginating two at a time
const slow = await client.messages.batches.create({
  requests: Array.from({ length: 6 }, (_, i) => ({
    custom_id: `slow-${i}`,
    params: params(`[[simulate latency=1]] slow ${i}`),
  })),
});
out.listed = [];
for await (const batch of client.messages.batches.list({ limit: 2 })) out.listed.push(batch.id);

// cancel while it runs
out.canceled = await client.messages.batches.cancel(slow.id);
out.canceledEnded = await waitEnded(client.messages.batches, slow.id);
out.canceledResults = await allResults(client.messages.batches, slow.id);

// delete, then the id is gone
out.deleted = await client.messages.batches.delete(created.id);
try {
  await client.messages.batches.retrieve(created.id);
  out.retrieveDeleted = 'found';
} catch (err) {
  out.retrieveDeleted = { name: err.constructor.name, status: err.status, type: err.error?.error?.type };
}

// the beta twin, with betas
const beta = await client.beta.messages.batches.create({
  betas: ['mid-conversation-system-clear-at-2026-08-21'],
  requests: [
    {
      custom_id: 'clear-at',
      params: params('', {
        messages: [
          { role: 'user', content: 'Hello' },
          { role: 'system', content: 'Only now.', clear_at: 'next_user_message' },
          { role: 'assistant', content: 'Hi.' },
          { role: 'user', content: 'Go on' },
          { role: 'system', output_config: { effort: 'low' } },
        ],
      }),
    },
    { custom_id: 'fast', params: params('Quick!', { speed: 'fast' }) },
  ],
});
out.betaEnded = await waitEnded(client.beta.messages.batches, beta.id);
out.betaResults = await allResults(client.beta.messages.batches, beta.id);
out.betaListed = [];
for await (const batch of client.beta.messages.batches.list({ limit: 100 })) out.betaListed.push(batch.id);

console.log(JSON.stringify(out));
