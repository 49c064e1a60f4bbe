-- wrk script: POST /v1/public/emails/send with a unique x-idempotency-key per request.
--
--   wrk -t1 -c64 -d10s --latency -s benchmarks/wrk_send.lua URL -- NONCE TOKEN BODY_FILE
--
-- NONCE makes keys unique across wrk runs (warm-up, measurement); each thread
-- numbers its own requests. Every status other than 202 is counted; done()
-- prints one line "WRKJSON {...}" that the harness parses.
--
-- Several servers: with WRK_PORTS=8001,8002 in the environment, thread k
-- connects to 127.0.0.1 on the k-th port (round-robin), so one wrk spreads
-- its connections evenly over the servers and reports one latency histogram.

local threads = {}
local ports = {}
for p in string.gmatch(os.getenv("WRK_PORTS") or "", "%d+") do
  table.insert(ports, p)
end

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
  if #ports > 0 then
    local port = ports[(#threads - 1) % #ports + 1]
    thread.addr = wrk.lookup("127.0.0.1", port)[1]
  end
end

function init(args)
  nonce = args[1] or "run"
  local token = args[2] or ""
  local f = assert(io.open(args[3], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  if token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
  counter = 0
  non202 = 0
  first_bad = ""
end

function request()
  counter = counter + 1
  wrk.headers["x-idempotency-key"] = nonce .. "-" .. tid .. "-" .. counter
  return wrk.format()
end

function response(status, headers, body)
  if status ~= 202 then
    non202 = non202 + 1
    if first_bad == "" then
      first_bad = tostring(status) .. " " .. string.sub(body or "", 1, 200)
    end
  end
end

local function json_string(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local bad, sample = 0, ""
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non202") or 0)
    local fb = t:get("first_bad") or ""
    if sample == "" and fb ~= "" then sample = fb end
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"non202":%d,"first_non202":%s,'
      .. '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,'
      .. '"timeouts":%d,"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes, bad, json_string(sample),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
