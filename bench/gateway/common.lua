-- common.lua - shared by the wrk scripts of bench/gateway: exact latencies and a
-- machine-readable summary line.
--
-- wrk 4's own latency histogram is "corrected" for coordinated omission before done() sees
-- it: every sample longer than twice the mean interval between requests of a connection gets
-- synthetic samples added (stats_correct() in wrk.c). On a shared 2-core machine a 5 ms
-- scheduling stall then turns into dozens of samples, inflating the mean and the tail, and
-- its mean no longer matches requests/duration. So the scripts also time every request
-- themselves: request() notes the send time (clock_gettime through LuaJIT's FFI, CLOCK_MONOTONIC)
-- and response() the arrival, into a per-thread histogram with 1 us buckets. That pairing is
-- exact only with one connection per thread, so run.sh always runs `wrk -tN -cN`; a thread
-- that sees a second request before the first one's answer counts it as "unpaired".
--
-- Every request is made unique: the scripts give install() their body in two halves and each
-- request is head .. "<run>-<thread>-<n>" .. tail (<run> is BENCH_RUN_ID, which run.sh sets
-- anew for every wrk invocation), so no answer cache on the path (aperture has one, on by
-- default) can serve a repeat, also across runs against the same process: the measurement is
-- of proxying, not of caching.
--
-- BENCH_DELAY_MS=D (environment) makes each connection wait D ms after every answer before it
-- sends the next request (wrk's delay() hook; the wait is not part of the latency): a paced,
-- moderate load instead of flat out.
--
-- done() prints one line:
--   BENCHJSON {"requests":..,"duration_us":..,"rps":..,"errors":{..},"non2xx":..,
--              "lat_us":{min,mean,p50,p90,p99,p999,max,n,unpaired},      exact, ours
--              "wrk_lat_us":{mean,p50,p90,p99,p999,max}}                 wrk's corrected ones

local ffi = require('ffi')
pcall(ffi.cdef, [[
  typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
  int clock_gettime(int clk, bench_timespec *ts);
]])
local ts = ffi.new('bench_timespec')
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

local M = {}

-- Install the wrk hooks (globals) for a script whose wrk.method/headers are set; the body of
-- request n of thread t is head .. run .. "-" .. t .. "-" .. n .. tail.
function M.install(head, tail)
  local threads = {}

  function setup(thread)
    table.insert(threads, thread)
    thread:set('thread_id', #threads)
  end

  -- Per thread (each thread has its own Lua state).
  local t0, n = nil, 0
  local run = os.getenv('BENCH_RUN_ID') or tostring(os.time())
  hist, non2xx, unpaired = {}, 0, 0

  local pause = tonumber(os.getenv('BENCH_DELAY_MS') or '')
  if pause and pause > 0 then
    function delay()
      return pause
    end
  end

  function request()
    n = n + 1
    local req = wrk.format(nil, nil, nil, head .. run .. '-' .. (thread_id or 0) .. '-' .. n .. tail)
    if t0 then unpaired = unpaired + 1 end
    t0 = now_us()
    return req
  end

  function response(status, headers, body)
    local t1 = now_us()
    if t0 then
      local us = math.floor(t1 - t0 + 0.5)
      hist[us] = (hist[us] or 0) + 1
      t0 = nil
    end
    if status < 200 or status > 299 then non2xx = non2xx + 1 end
  end

  function done(summary, latency, requests)
    -- Merge the threads' histograms.
    local merged, n, sum, bad, unp = {}, 0, 0, 0, 0
    for _, t in ipairs(threads) do
      for us, c in pairs(t:get('hist')) do
        merged[us] = (merged[us] or 0) + c
        n = n + c
        sum = sum + us * c
      end
      bad = bad + t:get('non2xx')
      unp = unp + t:get('unpaired')
    end
    local keys = {}
    for us in pairs(merged) do keys[#keys + 1] = us end
    table.sort(keys)
    local function pct(q)
      if n == 0 then return 0 end
      local want, acc = math.max(1, math.ceil(n * q / 100)), 0
      for _, us in ipairs(keys) do
        acc = acc + merged[us]
        if acc >= want then return us end
      end
      return keys[#keys]
    end
    local e = summary.errors
    local w = function(q) return latency:percentile(q) end
    io.write(string.format(
      'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"rps":%.2f,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"non2xx":%d,' ..
      '"lat_us":{"n":%d,"unpaired":%d,"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d},' ..
      '"wrk_lat_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      summary.requests / (summary.duration / 1e6),
      e.connect, e.read, e.write, e.status, e.timeout, bad,
      n, unp, keys[1] or 0, n > 0 and sum / n or 0, pct(50), pct(90), pct(99), pct(99.9),
      keys[#keys] or 0,
      latency.mean, w(50), w(90), w(99), w(99.9), latency.max))
  end
end

return M
