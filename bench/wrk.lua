-- wrk script for the txraft benchmarks (bench/cluster_http.py and bench/shop.py run it).
--
--   wrk -t1 -c64 -d10s --timeout 10s -s bench/wrk.lua http://127.0.0.1:PORT -- MODE [k=v ...]
--
-- MODE is one of
--   kv-put          PUT /kv/<key> with a raw value              (txraft)
--   kv-get          GET /kv/<key>, linearizable (ReadIndex)      (txraft)
--   kv-get-stale    GET /kv/<key>?consistency=stale              (txraft)
--   etcd-put        POST /v3/kv/put {"key","value"} in base64    (etcd's HTTP/JSON gateway)
--   etcd-get        POST /v3/kv/range {"key"}, linearizable      (etcd)
--   etcd-get-stale  POST /v3/kv/range {"key","serializable"}     (etcd)
--   shop-order      POST /orders, JSON, one line of one unit     (txraft shop)
-- options: size=64 (value bytes), keys=1000 (distinct keys per thread), prefix=k,
--          customers=c1,c2,... products=p1,p2,... idem=1 run=TOKEN (shop-order;
--          idem adds an Idempotency-Key unique to the run, as the shop's client does)
--
-- Every request is built once in init(), so the client spends its time on the network.
-- At the end one line starting with WRKJSON carries the counts and latency percentiles
-- (microseconds) for the Python side to parse.

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("id", thread_count)
  table.insert(threads, thread)
end

local b64chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = b64chars:sub(c1 + 1, c1 + 1) .. b64chars:sub(c2 + 1, c2 + 1)
      .. (b and b64chars:sub(c3 + 1, c3 + 1) or "=")
      .. (c and b64chars:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

local function split(text)
  local items = {}
  for item in string.gmatch(text or "", "[^,]+") do items[#items + 1] = item end
  return items
end

local requests = {}
local count = 0
local cursor = 0
local bodies = nil
local sent = 0

function init(args)
  local mode = args[1] or "kv-put"
  local opts = {}
  for i = 2, #args do
    local k, v = string.match(args[i], "^([%w_]+)=(.*)$")
    if k then opts[k] = v end
  end
  local size = tonumber(opts.size or "64")
  local keys = tonumber(opts.keys or "1000")
  local prefix = opts.prefix or "k"
  -- A value of exactly `size` bytes, different per thread so nothing dedups it.
  local value = string.sub(string.rep(string.format("v%d-", id), size), 1, size)
  local json = {["Content-Type"] = "application/json"}
  local raw = {["Content-Type"] = "application/octet-stream"}
  if mode == "shop-order" then
    local customers, products = split(opts.customers), split(opts.products)
    keys = math.max(#customers, 1) * math.max(#products, 1)
    if opts.idem then
      bodies = {}
      run_token = opts.run or "0"  -- the Python side passes a token unique to the run
    end
    for i = 0, keys - 1 do
      local c = customers[(i + id) % #customers + 1]
      local p = products[i % #products + 1]
      local body = string.format(
        '{"customer_id":"%s","items":[{"product_id":"%s","quantity":1}]}', c, p)
      if bodies then
        bodies[i + 1] = body
      else
        requests[i + 1] = wrk.format("POST", "/orders", json, body)
      end
    end
    count = keys
    return
  end
  for i = 0, keys - 1 do
    -- Reads use the keys the Python side preloaded (prefix .. i); writes spread over
    -- distinct keys per thread.
    local key
    if string.find(mode, "get") then
      key = prefix .. i
    else
      key = string.format("%s%d-%d", prefix, id, i)
    end
    local req
    if mode == "kv-put" then
      req = wrk.format("PUT", "/kv/" .. key, raw, value)
    elseif mode == "kv-get" then
      req = wrk.format("GET", "/kv/" .. key)
    elseif mode == "kv-get-stale" then
      req = wrk.format("GET", "/kv/" .. key .. "?consistency=stale")
    elseif mode == "etcd-put" then
      req = wrk.format("POST", "/v3/kv/put", json, string.format(
        '{"key":"%s","value":"%s"}', base64(key), base64(value)))
    elseif mode == "etcd-get" then
      req = wrk.format("POST", "/v3/kv/range", json, string.format(
        '{"key":"%s"}', base64(key)))
    elseif mode == "etcd-get-stale" then
      req = wrk.format("POST", "/v3/kv/range", json, string.format(
        '{"key":"%s","serializable":true}', base64(key)))
    else
      error("unknown mode " .. mode)
    end
    requests[i + 1] = req
  end
  count = keys
end

function request()
  cursor = cursor % count + 1
  if bodies then
    sent = sent + 1
    return wrk.format("POST", "/orders", {["Content-Type"] = "application/json",
      ["Idempotency-Key"] = string.format("wrk-%s-%d-%d", run_token, id, sent)},
      bodies[cursor])
  end
  return requests[cursor]
end

function done(summary, latency, requests)
  local points = {1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97.5, 99,
                  99.5, 99.9, 99.95, 99.99}
  local cdf = {}
  for _, p in ipairs(points) do
    cdf[#cdf + 1] = string.format("[%s,%d]", tostring(p), latency:percentile(p))
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,'
    .. '"read":%d,"write":%d,"status":%d,"timeout":%d},"latency_us":{"mean":%.1f,'
    .. '"stdev":%.1f,"min":%d,"max":%d,"percentiles":[%s]}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency.mean, latency.stdev, latency.min, latency.max,
    table.concat(cdf, ",")))
end
