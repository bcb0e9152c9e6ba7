-- wrk script: POST pre-signed callback bodies round-robin from a file of "signature<TAB>body"
-- lines. Thread k of n sends lines k, k+n, ... so threads never repeat each other's bodies.
-- Usage: wrk -t2 -c64 -d5s -s bench/post_bodies.lua http://127.0.0.1:PORT -- FILE NTHREADS
local threads = {}

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

function init(args)
   local path, n = args[1], tonumber(args[2])
   reqs = {}
   local i = 0
   for line in io.lines(path) do
      if i % n == tid then
         local sig, body = line:match("^([^\t]+)\t(.*)$")
         reqs[#reqs + 1] = wrk.format("POST", "/webhooks/recording-status", {
            ["Content-Type"] = "application/x-www-form-urlencoded",
            ["X-SignalWire-Signature"] = sig,
            -- As Heroku's router sets on every request.
            ["X-Request-ID"] = string.format("bench-%d-%d", tid, i),
         }, body)
      end
      i = i + 1
   end
   idx = 0
   wraps = 0
end

function request()
   idx = idx + 1
   if idx > #reqs then
      idx = 1
      wraps = wraps + 1
   end
   return reqs[idx]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,' ..
      '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
