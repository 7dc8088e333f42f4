-- wrk script for bench/pxe.sh: GET /pxe/{mac} over a fixed set of MACs.
-- Written for one wrk thread (-t1), which is what bench/pxe.sh runs.
--
--   wrk -t1 -c256 -d600s -s bench/pxe-macs.lua URL -- discover COUNT
--   wrk -t1 -c256 -d15s  -s bench/pxe-macs.lua URL -- known COUNT
--
-- discover: COUNT distinct MACs, each requested once, so every request is
--   a first contact and the server inserts a machine. When the last answer
--   is in, the thread stops and wrk is interrupted (SIGINT ends its timer
--   and it reports as usual), so -d is only an upper bound. wrk's own
--   duration is then the timer's, not the work's, so the elapsed time from
--   the first request to the last answer is measured here (CLOCK_MONOTONIC).
--   Requests that go out on free connections after the last new MAC has
--   been sent repeat known MACs; they are cut off and not counted.
-- known: the same MACs again, round-robin, until -d runs out.
--
-- A response is "bad" when it is not 2xx or is not an iPXE script that boots
-- something (a server that could not decide answers 200 with a retry
-- script). `done` prints one RESULT line for bench/pxe.sh to parse.

local ffi = require("ffi")
ffi.cdef [[
   typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
   int clock_gettime(int clk, bench_timespec *ts);
   int getpid(void);
   int kill(int pid, int sig);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
   ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local threads = {}
function setup(thread)
   table.insert(threads, thread)
end

local mode
local paths = {}
local sent, answered = 0, 0
-- Read back by `done` through thread:get, so global.
bad, bad_sample, t_first, t_last = 0, "", 0, 0

local function mac(i)
   -- Locally administered, unicast: 02-00-00-xx-xx-xx (iPXE's ${mac:hexhyp}).
   return string.format("02-00-00-%02x-%02x-%02x",
      math.floor(i / 65536) % 256, math.floor(i / 256) % 256, i % 256)
end

function init(args)
   mode = args[1] or "known"
   for i = 0, tonumber(args[2] or "10000") - 1 do
      paths[#paths + 1] = "/pxe/" .. mac(i)
   end
end

function request()
   if sent == 0 then t_first = now_us() end
   local p = paths[(sent % #paths) + 1]
   sent = sent + 1
   return wrk.format("GET", p)
end

function response(status, headers, body)
   answered = answered + 1
   if status < 200 or status > 299 or body:sub(1, 6) ~= "#!ipxe"
      or body:find("could not", 1, true) then
      bad = bad + 1
      if bad_sample == "" then
         bad_sample = tostring(status) .. " " .. body:sub(1, 120):gsub("%s+", " ")
      end
   end
   t_last = now_us()
   if mode == "discover" and answered == #paths then
      wrk.thread:stop()
      ffi.C.kill(ffi.C.getpid(), 2) -- SIGINT: wrk's main thread stops waiting
   end
end

function done(summary, latency, requests)
   local nbad, sample, elapsed = 0, "", summary.duration
   for _, t in ipairs(threads) do
      nbad = nbad + t:get("bad")
      if sample == "" then sample = t:get("bad_sample") end
      if t:get("t_last") > t:get("t_first") then elapsed = t:get("t_last") - t:get("t_first") end
   end
   local e = summary.errors
   io.write(string.format(
      "RESULT requests=%d duration_us=%d rps=%.0f p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
      "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d bad=%d\n",
      summary.requests, elapsed, summary.requests / (elapsed / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.status, e.timeout, nbad))
   if sample ~= "" then
      io.write("BADSAMPLE " .. sample .. "\n")
   end
end
