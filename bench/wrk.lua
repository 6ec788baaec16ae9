-- wrk script for the receiver benchmark: replays pre-built HTTP requests (signed GoPay
-- notifications) so that the load generator spends nothing on signing.
--
-- Usage: wrk -t T -c C -d D -s bench/wrk.lua URL -- REQUESTS_PREFIX
-- Thread i reads REQUESTS_PREFIX.i: records of "<byte length>\n<raw HTTP request>", and cycles
-- through them; `wrapped` says how often a thread ran out and started again.
-- done() prints one line "BENCH_JSON {...}" with the counts and latency percentiles (us).

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local function load_requests(path)
  local f = assert(io.open(path, "rb"))
  local data = f:read("*a")
  f:close()
  local list, pos = {}, 1
  while pos <= #data do
    local nl = data:find("\n", pos, true)
    local len = tonumber(data:sub(pos, nl - 1))
    list[#list + 1] = data:sub(nl + 1, nl + len)
    pos = nl + 1 + len
  end
  return list
end

function init(args)
  reqs = load_requests(args[1] .. "." .. tid)
  idx = 0
  sent = 0
  replies = 0
  wrapped = 0
  statuses = {}
end

function request()
  idx = idx + 1
  if idx > #reqs then
    idx = 1
    wrapped = wrapped + 1
  end
  sent = sent + 1
  return reqs[idx]
end

function response(status, headers, body)
  replies = replies + 1
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local total = { sent = 0, replies = 0, wrapped = 0 }
  local by_status = {}
  for _, thread in ipairs(threads) do
    for name, _ in pairs(total) do
      total[name] = total[name] + thread:get(name)
    end
    for code, count in pairs(thread:get("statuses")) do
      by_status[code] = (by_status[code] or 0) + count
    end
  end
  local codes = {}
  for code, count in pairs(by_status) do
    codes[#codes + 1] = string.format('"%s":%d', code, count)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"sent":%d,"replies":%d,"wrapped":%d,'
      .. '"statuses":{%s},"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%.0f,"p90":%.0f,"p99":%.0f,"p999":%.0f,"max":%.0f,"mean":%.1f}}\n',
    summary.requests, summary.duration, total.sent, total.replies, total.wrapped,
    table.concat(codes, ","), e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
