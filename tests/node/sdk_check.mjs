// The official `openai` Node SDK against the llm-cache HTTP front (tests/serve/node.rs).
//
//     node sdk_check.mjs --serve        # scenarios read from stdin, one a line
//
// with LLM_CACHE_BASE_URL (the front's /v1 URL), OPENAI_API_KEY (a caller key) and
// LLM_CACHE_NODE_MODULES (where scripts/node-sdk.sh installed the SDK) set. Each scenario
// checks what the SDK sees and prints one JSON object on one line (`{"failed": <stack>}`
// when a check fails); the Rust test checks the mock upstream around it. The SDK's own
// retries are off (maxRetries: 0).

import assert from "node:assert/strict";
import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(process.env.LLM_CACHE_NODE_MODULES + "/");
const { OpenAI } = require("openai");

const MODEL = "gpt-4.1-mini";

function client() {
  return new OpenAI({
    baseURL: process.env.LLM_CACHE_BASE_URL,
    apiKey: process.env.OPENAI_API_KEY,
    maxRetries: 0,
  });
}

const messages = (prompt) => [
  { role: "system", content: "Be terse." },
  { role: "user", content: prompt },
];

/** The SDK's parsed answer to `call` and the front's x-llm-cache header. */
async function withStatus(promise) {
  const { data, response } = await promise.withResponse();
  return { data, status: response.headers.get("x-llm-cache") };
}

/** Every event of a streamed answer, and its x-llm-cache header. */
async function streamed(promise) {
  const { data, response } = await promise.withResponse();
  const events = [];
  for await (const event of data) events.push(event);
  return { events, status: response.headers.get("x-llm-cache") };
}

const scenarios = {
  async chat() {
    const c = client();
    const ask = () =>
      withStatus(c.chat.completions.create({ model: MODEL, messages: messages("node hello"), temperature: 0 }));
    const first = await ask();
    const second = await ask();
    assert.deepEqual(second.data, first.data);
    return { text: first.data.choices[0].message.content, statuses: [first.status, second.status] };
  },

  async chat_stream() {
    const c = client();
    const ask = (usage) =>
      streamed(
        c.chat.completions.create({
          model: MODEL,
          messages: messages("node stream"),
          temperature: 0,
          stream: true,
          ...(usage ? { stream_options: { include_usage: true } } : {}),
        }),
      );
    const text = (events) => events.map((e) => e.choices[0]?.delta?.content ?? "").join("");
    const first = await ask(true);
    const again = await ask(false);
    assert.equal(text(again.events), text(first.events));
    const usage = first.events.at(-1).usage?.total_tokens ?? null;
    assert.ok(again.events.every((e) => e.usage == null), "no usage chunk unless asked");
    return { text: text(first.events), usage, statuses: [first.status, again.status] };
  },

  async embeddings() {
    const c = client();
    const first = await withStatus(c.embeddings.create({ model: "text-embedding-3-small", input: ["node alpha", "node beta"] }));
    const second = await withStatus(c.embeddings.create({ model: "text-embedding-3-small", input: "node beta" }));
    // The SDK asks for base64 and decodes it itself.
    assert.deepEqual(second.data.data[0].embedding, first.data.data[1].embedding);
    return { statuses: [first.status, second.status], dims: first.data.data[0].embedding.length };
  },

  async responses() {
    const c = client();
    const ask = () => withStatus(c.responses.create({ model: MODEL, input: "node responses" }));
    const first = await ask();
    const second = await ask();
    assert.deepEqual(second.data, first.data, "the stored answer, as it came");
    return { id: first.data.id, status: first.data.status, statuses: [first.status, second.status] };
  },

  async responses_stream() {
    const c = client();
    const ask = () => streamed(c.responses.create({ model: MODEL, input: "node responses stream", stream: true }));
    const first = await ask();
    const second = await ask();
    assert.deepEqual(second.events, first.events, "the replay is the stream as it came");
    const completed = first.events.find((e) => e.type === "response.completed");
    assert.ok(completed, JSON.stringify(first.events));
    return {
      types: first.events.map((e) => e.type),
      id: completed.response.id,
      statuses: [first.status, second.status],
    };
  },

  async completions() {
    const c = client();
    const ask = () => withStatus(c.completions.create({ model: "gpt-3.5-turbo-instruct", prompt: "node complete", max_tokens: 8 }));
    const first = await ask();
    const second = await ask();
    assert.deepEqual(second.data, first.data);
    const live = await streamed(
      c.completions.create({ model: "gpt-3.5-turbo-instruct", prompt: "node complete streamed", max_tokens: 8, stream: true }),
    );
    const replay = await streamed(
      c.completions.create({ model: "gpt-3.5-turbo-instruct", prompt: "node complete streamed", max_tokens: 8, stream: true }),
    );
    const text = (events) => events.map((e) => e.choices[0]?.text ?? "").join("");
    assert.equal(text(replay.events), text(live.events));
    assert.ok(text(live.events).length > 0, JSON.stringify(live.events));
    assert.ok(replay.events.every((e) => e.choices.length > 0), "no usage-only chunk unless asked");
    return {
      text: first.data.choices[0].text,
      statuses: [first.status, second.status],
      stream_statuses: [live.status, replay.status],
    };
  },
};

async function run(name, args) {
  try {
    const scenario = scenarios[name];
    if (!scenario) throw new Error(`no scenario ${name}`);
    return await scenario(...args);
  } catch (e) {
    return { failed: String(e?.stack ?? e) };
  }
}

if (process.argv[2] !== "--serve") {
  console.error("usage: node sdk_check.mjs --serve");
  process.exit(2);
}
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const [name, ...args] = line.trim().split(/\s+/);
  process.stdout.write(JSON.stringify(await run(name, args)) + "\n");
}
