-- wrk script for bench/run's canary figure: GET /v2/session/rate-limit
-- for instance ids in order (as bench/ids.lua: METHOD PATH LO HI [OFFSET]),
-- every one a cache miss while PostgreSQL is stopped.
--
-- A client that honours Retry-After: after a 5xx answer that carries one,
-- the connection waits that long before its next request (HONOUR=0 as a
-- sixth argument: no wait, the next request at once).
--
-- done() prints the same BENCH line as bench/ids.lua, with the counts of
-- answers by status class.

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)")
                       or "") .. "common.lua")

local reqs = {}
local n = 0
local i = 0
local wait = 0
local honour = true
local STRIDE = common.STRIDE
local counts = {}

function init(args)
    local method = args[1] or "GET"
    local path = args[2] or "/"
    local lo = tonumber(args[3] or "1")
    local hi = tonumber(args[4] or "10000")
    local offset = tonumber(args[5] or "0")
    honour = (args[6] or "1") ~= "0"

    for k = lo, hi do
        reqs[#reqs + 1] = wrk.format(method, common.target(path, k))
    end

    n = #reqs
    i = offset % n
end

function request()
    local r = reqs[(i * STRIDE) % n + 1]
    i = (i + 1) % n
    return r
end

function response(status, headers, body)
    local ra = headers["Retry-After"] or headers["retry-after"]
    if honour and status >= 500 and ra then
        wait = (tonumber(ra) or 1) * 1000
    else
        wait = 0
    end
end

function delay()
    local d = wait
    wait = 0
    return d
end

function done(summary, latency, requests)
    io.write(common.summary(summary, latency))
end
