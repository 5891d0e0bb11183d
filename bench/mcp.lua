-- wrk script: MCP `tools/call` POSTs from 1,000 agent identities in rotation.
--
-- Every request is a JSON-RPC tools/call of `bench_tool` with the identity in `x-agent-id`
-- (the header mcp-authz's header identity source reads). The requests are built once, in
-- init, so wrk spends no Lua time per request. At the end one JSON line goes to stdout:
-- counts, errors and latency percentiles in microseconds, for bench/run.py to read.
--
--   wrk -t1 -c16 -d3s -s bench/mcp.lua http://127.0.0.1:10000/mcp [-- IDENTITIES TOOL PATH PREFIX TRACED]
--
-- TRACED "1" gives each request a sampled W3C traceparent, as Envoy's tracing would, for
-- measuring the service's own tracing cost without Envoy (bench/trace_cost.py).

local requests = {}
local index = 0

function init(args)
  local identities = tonumber(args[1] or "1000")
  local tool = args[2] or "bench_tool"
  local path = args[3] or "/mcp"
  local prefix = args[4] or "agent"
  local traced = args[5] == "1"
  for i = 1, identities do
    local body = string.format(
      '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s",'
        .. '"arguments":{"text":"hello"}}}', i, tool)
    requests[i] = wrk.format("POST", path, {
      ["content-type"] = "application/json",
      ["accept"] = "application/json, text/event-stream",
      ["mcp-protocol-version"] = "2025-11-25",
      ["x-agent-id"] = string.format("%s-%04d", prefix, i),
      ["traceparent"] = traced and string.format("00-%032x-%016x-01", i, i) or nil,
    }, body)
  end
  -- Threads start at different identities so two threads do not march in step.
  index = math.random(0, identities - 1)
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,'
      .. '"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read,
    e.write, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
