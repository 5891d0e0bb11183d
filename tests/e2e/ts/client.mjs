// End-to-end client: the official TypeScript MCP SDK (1.x, protocol 2025-11-25) through Envoy.
//
//   node client.mjs URL TOOL:COUNT [TOOL:COUNT ...]
//
// Connects once, makes the calls in order in that one session, then lists the tools and ends
// the session (DELETE), and prints one JSON line: what each step returned or threw. Refusals
// are recorded, never fatal, so the test sees whether the session outlives them.

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

// Arguments the demo server's tools accept.
const ARGUMENTS = {
  echo: { text: 'hello' },
  transfer_funds: { amount: 5, to: 'mallory' },
};

function describeError(error) {
  return {
    name: error?.constructor?.name ?? typeof error,
    code: error?.code ?? null,
    message: error?.message ?? String(error),
    data: error?.data ?? null,
  };
}

async function attempt(step) {
  try {
    return { ok: true, value: await step() };
  } catch (error) {
    return { ok: false, error: describeError(error) };
  }
}

function parsePlan(specs) {
  return specs.flatMap((spec) => {
    const separator = spec.lastIndexOf(':');
    const tool = spec.slice(0, separator);
    const count = Number(spec.slice(separator + 1));
    if (separator <= 0 || !Number.isInteger(count) || count < 1) {
      throw new Error(`bad call spec ${JSON.stringify(spec)}: want TOOL:COUNT`);
    }
    return Array(count).fill(tool);
  });
}

async function main() {
  const [url, ...specs] = process.argv.slice(2);
  if (!url || specs.length === 0) {
    throw new Error('usage: node client.mjs URL TOOL:COUNT [TOOL:COUNT ...]');
  }
  const plan = parsePlan(specs);
  const transport = new StreamableHTTPClientTransport(new URL(url));
  const client = new Client({ name: 'mcp-authz-e2e', version: '0.1.0' });
  await client.connect(transport);

  const report = { protocolVersion: transport.protocolVersion, sessionId: transport.sessionId };
  report.calls = [];
  for (const tool of plan) {
    const outcome = await attempt(() => client.callTool({ name: tool, arguments: ARGUMENTS[tool] ?? {} }));
    // The tool's own result is not what is under test; whether it was an error result is.
    const result = outcome.ok ? { ok: true, isError: outcome.value.isError ?? false } : outcome;
    report.calls.push({ tool, ...result });
  }
  const listed = await attempt(() => client.listTools());
  report.listTools = listed.ok ? { ok: true, tools: listed.value.tools.map((t) => t.name) } : listed;
  report.sessionIdAfter = transport.sessionId;
  report.terminate = await attempt(() => transport.terminateSession());
  await client.close();
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

main().catch((error) => {
  process.stderr.write(`${error?.stack ?? error}\n`);
  process.exit(1);
});
