-- wrk script for bench/run: cycles over distinct instance ids and their
-- tokens, one request each, then again from the start.  The k-th request
-- of a pass goes to index (k * 7919) mod N of the range, so requests in
-- flight together belong to different accounts, as pgbench's do.
--
--   wrk ... -s bench/ids.lua URL -- METHOD PATH LO HI [OFFSET [SLUG0,SLUG1]]
--
-- Instance n (LO <= n <= HI) is "1" followed by n in 11 digits
-- (100000000001 for n = 1); its account is (n - 1) // 10 + 1 and the
-- account's token "bench-token-<account>" (bench/run creates them so).
-- OFFSET: where in the cycle to start (default 0).  SLUG0,SLUG1: add
-- policy_slug, SLUG0 on even passes over the range, SLUG1 on odd ones, so
-- that every PATCH really changes the policy (bench/run keeps OFFSET
-- running across rounds).  Each wrk thread starts half a cycle after the
-- previous one; bench/run uses one thread (-t1) where the order matters.
--
-- BENCH_PACE_MS in the environment (a whole number): each connection
-- waits that long before each of its requests, a latency probe at a
-- steady rate rather than a throughput run (bench/run's canary).
--
-- done() prints one line for bench/run:
--   BENCH requests=N duration_us=N connect=N read=N write=N status=N
--         timeout=N p50_us=N p99_us=N

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)")
                       or "") .. "common.lua")

local reqs = {}
local alt = {}
local n = 0
local i = 0
local pass = 0
local STRIDE = common.STRIDE

local pace = tonumber(os.getenv("BENCH_PACE_MS") or "0") or 0

if pace > 0 then
    -- defined only when pacing: wrk times every request of a script
    -- that has delay(), which would slow the throughput runs
    function delay()
        return pace
    end
end

setup = common.setup

function init(args)
    local method = args[1] or "GET"
    local path = args[2] or "/"
    local lo = tonumber(args[3] or "1")
    local hi = tonumber(args[4] or "10000")
    local offset = tonumber(args[5] or "0")
    local slugs = args[6] or ""
    local s0, s1 = slugs:match("^([^,]+),([^,]+)$")

    for k = lo, hi do
        local q = common.target(path, k)
        if s0 then
            reqs[#reqs + 1] = wrk.format(method, q .. "&policy_slug=" .. s0)
            alt[#alt + 1] = wrk.format(method, q .. "&policy_slug=" .. s1)
        else
            reqs[#reqs + 1] = wrk.format(method, q)
        end
    end

    n = #reqs
    local start = offset + math.floor((tid or 0) * n / 2)
    i = start % n
    pass = math.floor(start / n)
    if not s0 then
        alt = reqs
    end
end

function request()
    local r
    local k = (i * STRIDE) % n
    if pass % 2 == 0 then
        r = reqs[k + 1]
    else
        r = alt[k + 1]
    end
    i = i + 1
    if i == n then
        i = 0
        pass = pass + 1
    end
    return r
end

function done(summary, latency, requests)
    io.write(common.summary(summary, latency))
end
