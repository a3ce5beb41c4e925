-- What bench/run's wrk scripts (ids.lua, misses.lua, slices.lua) share,
-- loaded by each with
--
--   local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)")
--                          or "") .. "common.lua")
--
-- in each of wrk's Lua states.

local common = {}

-- wrk's threads, in the order setup() saw them (each knows its own number
-- as the global tid), for done() to read their results
common.threads = {}

function common.setup(thread)
    thread:set("tid", #common.threads)
    table.insert(common.threads, thread)
end

-- a prime: stepping by it over a range of N ids (N not a multiple of it)
-- visits every index once per pass, and requests in flight together
-- belong to different accounts
common.STRIDE = 7919

-- the request target for instance n: instance n is "1" followed by n in 11
-- digits (100000000001 for n = 1), its account (n - 1) // 10 + 1 and the
-- account's token "bench-token-<account>" (bench/run creates them so)
function common.target(path, n)
    local id = string.format("1%011d", n)
    local acct = math.floor((n - 1) / 10) + 1

    return path .. "?instance_id=" .. id .. "&access_token=bench-token-"
           .. acct
end

-- the line run_wrk in bench/lib.sh reads:
--   BENCH requests=N duration_us=N connect=N read=N write=N status=N
--         timeout=N p50_us=N p99_us=N
function common.summary(summary, latency)
    local e = summary.errors

    return string.format(
        "BENCH requests=%d duration_us=%d connect=%d read=%d write=%d "
        .. "status=%d timeout=%d p50_us=%d p99_us=%d\n",
        summary.requests, summary.duration, e.connect, e.read, e.write,
        e.status, e.timeout, latency:percentile(50),
        latency:percentile(99))
end

return common
