-- wrk script for bench/run: several locations measured in one run, taking
-- turns in short time slices, so that the machine's speed, which on a
-- shared virtual machine changes from one tenth of a second to the next,
-- is the same for all of them.
--
--   wrk ... -s bench/slices.lua URL -- LO HI PATH1 PATH2 [PATH3 ...]
--
-- Time is cut into slices of BENCH_SLICE_MS (23) milliseconds of the
-- monotonic clock, the same for every wrk thread; slice k belongs to
-- PATH(k mod N + 1).  Every request goes to the path of the slice in which
-- wrk makes it, with the instance ids and tokens of bench/ids.lua (LO-HI,
-- the k-th request of a pass to index (k * 7919) mod N).  A path's
-- throughput is the requests made in its slices over their total length.
--
-- Each request made in a slice follows the answer to an earlier one, so
-- the count of a slice is the answers the server gave in it.  At the
-- start of a slice the server still owes the requests of the previous one
-- (at most one per connection): with 32 connections, about 18 us a
-- request and 23-ms slices, a location following one 6% cheaper is
-- counted about 0.15% short, one following a dearer one as much over.
-- bench/run changes which location follows which from round to round.
--
-- Why slices: on a shared virtual machine the same nginx spends from 17 to
-- 23 us of CPU on the same request from one second to the next, and the
-- counts of 100-ms slices of one run vary by a third.  Separate runs of
-- seconds each compare different machines; slices of 23 ms compare the
-- locations on nearly the same one.  Measured on this machine, 9-s runs:
-- enforce / plain spread 0.919-0.940 in 23-ms slices, 0.905-0.991 in
-- 97-ms slices; plain / plain 0.970-1.013.
--
-- Slices shorter than the whole (the first and last) and those of the
-- first BENCH_SLICE_SKIP_MS (500) are left out.  23 ms: a prime, so that
-- nothing periodic (wrk samples its own statistics every 100 ms) falls on
-- the slices of one path.
--
-- done() prints, for bench/run,
--   BENCH requests=N duration_us=N connect=N read=N write=N status=N
--         timeout=N p50_us=N p99_us=N
--   SLICES slices=N ms=N PATH1=REQ_PER_S PATH2=REQ_PER_S ...
-- (slices: how many of each path's were counted, at least).

local ffi = require("ffi")

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)")
                       or "") .. "common.lua")

ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
int clock_gettime(int clock, bench_timespec_t *ts);
]]

local CLOCK_MONOTONIC = 1
local STRIDE = common.STRIDE

local ts = ffi.new("bench_timespec_t")
local slice_us = (tonumber(os.getenv("BENCH_SLICE_MS") or "23") or 23) * 1000
local skip_us = (tonumber(os.getenv("BENCH_SLICE_SKIP_MS") or "500") or 500)
                * 1000

local reqs = {}
local n = 0
local i = 0

-- read by done() from each thread: the paths, and the requests made per
-- slice, keyed "s<slice number>" (wrk copies string keys faithfully)
paths = {}
counts = {}
first = nil

local function now_us()
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end

setup = common.setup

function init(args)
    local lo = tonumber(args[1] or "1")
    local hi = tonumber(args[2] or "10000")

    for a = 3, #args do
        paths[#paths + 1] = args[a]
    end

    for p = 1, #paths do
        local list = {}

        for k = lo, hi do
            list[#list + 1] = wrk.format("GET", common.target(paths[p], k))
        end

        reqs[p] = list
    end

    n = hi - lo + 1
    i = math.floor((tid or 0) * n / 2) % n
end

function request()
    local t = now_us()
    local s = math.floor(t / slice_us)
    local key = "s" .. s

    if not first then
        first = t
    end

    counts[key] = (counts[key] or 0) + 1

    local k = (i * STRIDE) % n
    i = i + 1
    if i == n then
        i = 0
    end

    return reqs[s % #paths + 1][k + 1]
end

function done(summary, latency, requests)
    local all = {}
    local lo, hi, start

    io.write(common.summary(summary, latency))

    for _, thread in ipairs(common.threads) do
        local c = thread:get("counts")
        local f = thread:get("first")

        if f and (not start or f < start) then
            start = f
        end

        for key, v in pairs(c) do
            local s = tonumber(string.sub(key, 2))
            all[s] = (all[s] or 0) + v
            if not lo or s < lo then lo = s end
            if not hi or s > hi then hi = s end
        end
    end

    local ps = common.threads[1]:get("paths")
    local np = #ps
    local sum, cnt = {}, {}

    if lo then
        -- whole slices only, and none of the first skip_us
        lo = math.max(lo + 1, math.ceil((start + skip_us) / slice_us))

        for s = lo, hi - 1 do
            local p = s % np + 1
            sum[p] = (sum[p] or 0) + (all[s] or 0)
            cnt[p] = (cnt[p] or 0) + 1
        end
    end

    local line = "SLICES"
    local least

    for p = 1, np do
        if not cnt[p] then
            io.write("SLICES none: the run is too short for its slices\n")
            return
        end

        if not least or cnt[p] < least then
            least = cnt[p]
        end
    end

    line = string.format("SLICES slices=%d ms=%d", least, slice_us / 1000)

    for p = 1, np do
        line = line .. string.format(" %s=%.1f", ps[p],
                                     sum[p] * 1000000 / (cnt[p] * slice_us))
    end

    io.write(line .. "\n")
end
