
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * Tests of src/ngx_http_ratelimit_policy_window.c on its own, the clocks
 * injected.  Random arrival sequences are checked by brute force against
 * the list of admitted requests: no 60-second window holds more than the
 * limit, nothing that fits is refused, Retry-After is neither too early
 * nor later than needed, and the headers' remaining / reset are exact.
 * Then the UTC day, the cool-down, concurrency, clocks moving backwards,
 * zero and unlimited limits, and the write-behind bookkeeping.
 *
 * The last line of the output is "N passed, M failed"; the exit code is
 * non-zero when anything failed.
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "ngx_http_ratelimit_policy_window.h"


#define NONE  NGX_HTTP_RATELIMIT_POLICY_WINDOW_NONE
#define DAY   NGX_HTTP_RATELIMIT_POLICY_WINDOW_DAY

/* a wall clock of 2025-06-01 00:00:00 UTC, and a monotonic one */
#define WALL0  1748736000LL
#define MONO0  5000u

#define MAX_ADMITTED  100000


typedef ngx_http_ratelimit_policy_window_t         window_t;
typedef ngx_http_ratelimit_policy_window_limits_t  limits_t;
typedef ngx_http_ratelimit_policy_window_result_t  result_t;


static unsigned  passed, failed;
static unsigned  quiet_passes;

static uint32_t  admitted[MAX_ADMITTED];
static unsigned  nadmitted;


#define check(cond, ...)                                                     \
    do {                                                                     \
        if (cond) {                                                          \
            passed++;                                                        \
        } else {                                                             \
            failed++;                                                        \
            printf("not ok: %s:%d: ", __FILE__, __LINE__);                   \
            printf(__VA_ARGS__);                                             \
            printf("\n");                                                    \
        }                                                                    \
    } while (0)


static limits_t
limits(int64_t per_minute, int64_t daily, int64_t protection,
    int64_t concurrent)
{
    limits_t  l;

    l.per_minute = per_minute;
    l.daily = daily;
    l.protection = protection;
    l.concurrent = concurrent;

    return l;
}


static window_t *
fresh(void)
{
    return calloc(1, sizeof(window_t));
}


/* "mono" in whole seconds here; decide_ms() takes milliseconds */

static int
decide(window_t *w, unsigned cls, limits_t l, uint32_t mono, int64_t wall,
    result_t *res)
{
    return ngx_http_ratelimit_policy_window_decide(w, cls, &l,
                                                   (uint64_t) mono * 1000,
                                                   wall, res);
}


static int
decide_ms(window_t *w, unsigned cls, limits_t l, uint64_t mono,
    int64_t wall, result_t *res)
{
    return ngx_http_ratelimit_policy_window_decide(w, cls, &l, mono, wall,
                                                   res);
}


/* admissions recorded in seconds from..to (inclusive) */

static unsigned
count(uint32_t from, uint32_t to)
{
    unsigned  i, n;

    n = 0;

    for (i = 0; i < nadmitted; i++) {
        if (admitted[i] >= from && admitted[i] <= to) {
            n++;
        }
    }

    return n;
}


static unsigned
in_window(uint32_t t)
{
    return count(t >= 59 ? t - 59 : 0, t);
}


static void
test_random_minute(unsigned trials)
{
    static const int64_t  ls[] = { 1, 2, 3, 5, 8, 13, 20, 60, 100, 300 };

    int        v;
    int64_t    L;
    uint32_t   t, end, u;
    unsigned   trial, i, n, burst, before, ok, bad;
    result_t   res;
    window_t  *w;

    for (trial = 0; trial < trials; trial++) {
        L = ls[rand() % (sizeof(ls) / sizeof(ls[0]))];
        w = fresh();
        nadmitted = 0;

        t = MONO0 + (uint32_t) (rand() % 1000);
        end = t + 200 + (uint32_t) (rand() % 400);
        bad = 0;

        while (t < end) {

            /* bursts, single requests and pauses of up to two minutes */

            switch (rand() % 4) {
            case 0:
                burst = 1 + rand() % (unsigned) (2 * L + 2);
                break;
            case 1:
                burst = 1;
                break;
            case 2:
                burst = rand() % 3;
                break;
            default:
                burst = 0;
                t += rand() % 120;
                break;
            }

            for (i = 0; i < burst; i++) {
                before = in_window(t);

                v = decide(w, 0, limits(L, NONE, NONE, NONE), t,
                           WALL0 + t, &res);

                if (v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS) {
                    ngx_http_ratelimit_policy_window_release(w);

                    if (nadmitted < MAX_ADMITTED) {
                        admitted[nadmitted++] = t;
                    }

                    /* admitted: the window ending now holds at most L */
                    if (!(before + 1 <= (unsigned) L)) {
                        bad++;
                        check(0, "L=%lld t=%u admitted with %u in window",
                              (long long) L, t, before);
                    }

                    /* remaining and reset are exact */
                    n = in_window(t);

                    if (res.minute_remaining != L - (int64_t) n) {
                        bad++;
                        check(0, "L=%lld t=%u remaining %lld, window %u",
                              (long long) L, t,
                              (long long) res.minute_remaining, n);
                    }

                    if (res.minute_remaining > 0) {
                        u = t + (uint32_t) res.minute_reset;

                        if (res.minute_reset < 1 || res.minute_reset > 60
                            || !(count(u - 59, t) < n)
                            || !(count(u - 60, t) == n))
                        {
                            bad++;
                            check(0, "L=%lld t=%u reset %lld wrong",
                                  (long long) L, t,
                                  (long long) res.minute_reset);
                        }
                    }

                    continue;
                }

                /* refused: only because the window is full */

                if (v != NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE
                    || before < (unsigned) L)
                {
                    bad++;
                    check(0, "L=%lld t=%u refused (%d) with %u in window",
                          (long long) L, t, v, before);
                    continue;
                }

                /* Retry-After: a retry then passes, one second earlier not */

                u = t + (uint32_t) res.retry_after;
                ok = res.retry_after >= 1
                     && count(u - 59, t) < (unsigned) L
                     && (res.retry_after == 1
                         || count(u - 60, t) >= (unsigned) L)
                     && res.minute_remaining == 0
                     && res.minute_reset == res.retry_after;

                if (!ok) {
                    bad++;
                    check(0, "L=%lld t=%u retry_after %lld wrong",
                          (long long) L, t, (long long) res.retry_after);
                }
            }

            t++;
        }

        /* brute force over the whole timeline */

        for (u = MONO0; u < end + 60; u++) {
            if (in_window(u) > (unsigned) L) {
                bad++;
                check(0, "L=%lld: %u admitted in the window ending at %u",
                      (long long) L, in_window(u), u);
                break;
            }
        }

        if (bad == 0) {
            quiet_passes++;
        }

        free(w);
    }

    check(quiet_passes == trials, "%u of %u random sequences exact",
          quiet_passes, trials);
}


static void
test_exact_first_minute(void)
{
    unsigned   i, n;
    result_t   res;
    window_t  *w;

    /* 64 requests a second for 70 seconds, 8 a minute: 8, then 8 again */

    w = fresh();
    n = 0;

    for (i = 0; i < 64 * 70; i++) {
        if (decide(w, 0, limits(8, NONE, NONE, NONE), MONO0 + i / 64,
                   WALL0, &res)
            == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS)
        {
            ngx_http_ratelimit_policy_window_release(w);

            if (i / 64 < 60) {
                n++;
            }
        }
    }

    check(n == 8, "first minute admitted %u, want 8", n);
    check(w->cls[0].daily == 16, "two minutes admitted %u, want 16",
          w->cls[0].daily);

    free(w);
}


/*
 * Milliseconds: a burst after a pause, starting anywhere in a second, gets
 * its next request no earlier than 60.000 s after its first one (this is
 * what "wrk -c64 admits exactly 8 in the first minute" relies on), and the
 * cool-down lasts its seconds to the millisecond.
 */

static void
test_burst_after_pause(void)
{
    uint64_t   t, first, ninth, start;
    unsigned   n, k, bad;
    result_t   res;
    window_t  *w;

    bad = 0;

    for (k = 0; k < 200; k++) {
        w = fresh();
        start = 12345000 + (uint64_t) (rand() % 100000);

        /* an earlier burst, then a pause of over a minute */

        (void) decide_ms(w, 0, limits(8, NONE, 60, NONE), start - 200000,
                         WALL0, &res);
        ngx_http_ratelimit_policy_window_release(w);

        first = 0;
        ninth = 0;
        n = 0;

        for (t = start; t < start + 130000; t += 1 + rand() % 7) {
            if (decide_ms(w, 0, limits(8, NONE, 60, NONE), t, WALL0, &res)
                != NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS)
            {
                continue;
            }

            ngx_http_ratelimit_policy_window_release(w);

            if (n == 0) {
                first = t;
            }

            if (n == 8) {
                ninth = t;
            }

            n++;
        }

        /* the cool-down starts with the first refusal, a few ms later */

        if (first != start || ninth < first + 60000 || ninth > first + 60100
            || n != 24)
        {
            bad++;

            if (bad < 5) {
                check(0, "burst at %llu: first %llu, 9th %llu, %u passed",
                      (unsigned long long) start,
                      (unsigned long long) first,
                      (unsigned long long) ninth, n);
            }
        }

        free(w);
    }

    check(bad == 0, "bursts after a pause: 9th request at +60 s (%u bad)",
          bad);
}


/* random milliseconds: no 59-second interval holds more than the limit */

static void
test_random_ms(unsigned trials)
{
    static const int64_t  ls[] = { 1, 2, 5, 8, 20, 60 };

    int64_t    L;
    uint64_t   t, end, *at;
    unsigned   trial, i, j, n, bad;
    result_t   res;
    window_t  *w;

    at = malloc(sizeof(uint64_t) * MAX_ADMITTED);
    bad = 0;

    for (trial = 0; trial < trials; trial++) {
        L = ls[rand() % (sizeof(ls) / sizeof(ls[0]))];
        w = fresh();
        n = 0;

        t = 5000000 + (uint64_t) (rand() % 1000000);
        end = t + 400000;

        while (t < end && n < MAX_ADMITTED) {
            if (decide_ms(w, 0, limits(L, NONE, NONE, NONE), t, WALL0, &res)
                == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS)
            {
                ngx_http_ratelimit_policy_window_release(w);
                at[n++] = t;
            }

            switch (rand() % 5) {
            case 0:
                t += (uint64_t) (rand() % 90000);
                break;
            case 1:
                t += (uint64_t) (rand() % 3000);
                break;
            default:
                t += (uint64_t) (rand() % 200);
                break;
            }
        }

        /* admissions are in time order: a window of L + 1 of them */

        for (i = 0, j = (unsigned) L; j < n; i++, j++) {
            if (at[j] - at[i] < 59000) {
                bad++;
                check(0, "L=%lld: %lld admitted within %llu ms",
                      (long long) L, (long long) L + 1,
                      (unsigned long long) (at[j] - at[i]));
                break;
            }
        }

        free(w);
    }

    free(at);

    check(bad == 0, "%u random millisecond sequences within 59 s bounds",
          trials);
}


static void
test_day_rollover(void)
{
    int        v;
    int64_t    wall;
    uint32_t   day, n;
    unsigned   i;
    result_t   res;
    window_t  *w;

    w = fresh();
    wall = WALL0 + 20 * DAY - 10;     /* 23:59:50 UTC */

    for (i = 0; i < 5; i++) {
        v = decide(w, 1, limits(NONE, 5, NONE, NONE), MONO0 + i, wall + i,
                   &res);
        ngx_http_ratelimit_policy_window_release(w);
        check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS,
          "day: request %u passes",
              i);
    }

    check(res.day_remaining == 0, "day: remaining %lld",
          (long long) res.day_remaining);
    check(res.day_reset == 6, "day: reset %lld, want 6 (midnight)",
          (long long) res.day_reset);

    v = decide(w, 1, limits(NONE, 5, NONE, NONE), MONO0 + 5, wall + 5, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_DAILY,
          "day: 6th refused (%d)", v);
    check(res.retry_after == 5, "day: retry_after %lld, want 5",
          (long long) res.retry_after);

    v = decide(w, 1, limits(NONE, 5, NONE, NONE), MONO0 + 9, wall + 9, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_DAILY, "day: 23:59:59 refused");

    v = decide(w, 1, limits(NONE, 5, NONE, NONE), MONO0 + 10, wall + 10,
               &res);
    ngx_http_ratelimit_policy_window_release(w);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS,
          "day: midnight passes (%d)",
          v);
    check(res.day_remaining == 4 && res.day_reset == DAY,
          "day: new day remaining %lld reset %lld",
          (long long) res.day_remaining, (long long) res.day_reset);

    /* the old day's unwritten count is carried, and written first */

    check(w->cls[1].carry == 5 && w->cls[1].pending == 1,
          "day: carry %u pending %u", w->cls[1].carry, w->cls[1].pending);

    n = ngx_http_ratelimit_policy_window_take(&w->cls[1], &day);
    check(n == 5 && day == (uint32_t) ((wall) / DAY),
          "day: take %u for day %u", n, day);

    ngx_http_ratelimit_policy_window_written(&w->cls[1], day, 1234);
    check(w->cls[1].daily == 1, "day: old day's total not taken (%u)",
          w->cls[1].daily);

    n = ngx_http_ratelimit_policy_window_take(&w->cls[1], &day);
    check(n == 1 && day == (uint32_t) ((wall + 10) / DAY),
          "day: then today's %u for day %u", n, day);

    ngx_http_ratelimit_policy_window_written(&w->cls[1], day, 3);
    check(w->cls[1].daily == 3 && ngx_http_ratelimit_policy_window_clean(w),
          "day: today's total from the database %u", w->cls[1].daily);

    /* the wall clock stepped back across midnight: still the new day */

    v = decide(w, 1, limits(NONE, 5, NONE, NONE), MONO0 + 11, wall - 100,
               &res);
    ngx_http_ratelimit_policy_window_release(w);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS && w->cls[1].daily == 4,
          "day: clock back, same day, daily %u", w->cls[1].daily);

    v = decide(w, 1, limits(NONE, 5, NONE, NONE), MONO0 + 12, wall - 90,
               &res);
    ngx_http_ratelimit_policy_window_release(w);
    v = decide(w, 1, limits(NONE, 5, NONE, NONE), MONO0 + 13, wall - 80,
               &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_DAILY,
          "day: clock back, cap still holds (%d)", v);
    check(res.retry_after == DAY + 10 + 80,
          "day: clock back, retry_after %lld until the later day ends",
          (long long) res.retry_after);

    free(w);
}


static void
test_cooldown(void)
{
    int        v;
    uint32_t   t;
    uint64_t   until;
    result_t   res;
    window_t  *w;
    limits_t   l;

    w = fresh();
    l = limits(2, NONE, 60, NONE);
    t = MONO0;

    v = decide(w, 0, l, t, WALL0, &res);
    ngx_http_ratelimit_policy_window_release(w);
    v = decide(w, 0, l, t + 1, WALL0, &res);
    ngx_http_ratelimit_policy_window_release(w);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS, "cool-down: 2 pass");

    v = decide(w, 0, l, t + 2, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE
          && res.protection_started,
          "cool-down: 3rd refused by the minute, cool-down starts");
    check(res.retry_after == 60, "cool-down: retry_after %lld, want 60",
          (long long) res.retry_after);

    until = w->protect_until;
    check(until == (uint64_t) (t + 62) * 1000, "cool-down: until %llu",
          (unsigned long long) until);

    /* during the cool-down: refused, nothing consumed, not restarted */

    v = decide(w, 0, l, t + 61, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PROTECTION
          && res.retry_after == 1 && w->protect_until == until
          && !res.protection_started,
          "cool-down: refused at +59 (%d, %lld)", v,
          (long long) res.retry_after);

    /* every class of the instance */

    v = decide(w, 2, limits(NONE, NONE, 60, NONE), t + 30, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PROTECTION
          && res.retry_after == 32,
          "cool-down: another class refused too (%d, %lld)", v,
          (long long) res.retry_after);
    check(w->cls[2].daily == 0 && w->cls[0].daily == 2,
          "cool-down: rejected requests consume nothing");

    v = decide(w, 0, l, t + 62, WALL0, &res);
    ngx_http_ratelimit_policy_window_release(w);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS,
          "cool-down: over at +60 (%d)",
          v);

    /* the daily cap starts it as well; retry is the later of the two */

    w->protect_until = 0;
    v = decide(w, 1, limits(NONE, 0, 30, NONE), t + 100, WALL0 + 100, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_DAILY && res.protection_started
          && res.retry_after == DAY - 100,
          "cool-down: daily cap starts it, retry at midnight (%lld)",
          (long long) res.retry_after);
    check(w->protect_until == (uint64_t) (t + 130) * 1000,
          "cool-down: 30 s from the cap");

    /* a cool-down shorter than the window: Retry-After is the window's */

    free(w);
    w = fresh();
    l = limits(1, NONE, 5, NONE);

    v = decide(w, 0, l, t, WALL0, &res);
    ngx_http_ratelimit_policy_window_release(w);
    v = decide(w, 0, l, t + 10, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE && res.retry_after == 50,
          "cool-down: short cool-down, retry_after %lld is the window's",
          (long long) res.retry_after);

    v = decide(w, 0, l, t + 20, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE && res.retry_after == 40,
          "cool-down: after it, the window still refuses (%d, %lld)", v,
          (long long) res.retry_after);

    check(res.protection_started
          && w->protect_until == (uint64_t) (t + 25) * 1000,
          "cool-down: exceeding again after it starts it again");

    v = decide(w, 0, l, t + 12, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PROTECTION
          && res.retry_after == 48,
          "cool-down: an older monotonic clock counts as the newest second"
          " (%d, %lld)", v, (long long) res.retry_after);

    free(w);
}


static void
test_concurrency(void)
{
    int        v;
    result_t   res;
    window_t  *w;
    limits_t   l;

    w = fresh();
    l = limits(NONE, NONE, 60, 2);

    v = decide(w, 0, l, MONO0, WALL0, &res);
    v = decide(w, 2, l, MONO0, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS && w->inflight == 2,
          "concurrency: 2 in flight, any class");

    v = decide(w, 0, l, MONO0, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_CONCURRENCY
          && res.retry_after == 1
          && !res.protection_started && w->protect_until == 0,
          "concurrency: 3rd refused, no cool-down");
    check(w->cls[0].daily == 1 && w->inflight == 2,
          "concurrency: the refused request consumed nothing");

    ngx_http_ratelimit_policy_window_release(w);

    v = decide(w, 0, l, MONO0, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS,
          "concurrency: after release");

    /* the minute window full as well: Retry-After is the window's */

    free(w);
    w = fresh();
    l = limits(1, NONE, NONE, 1);

    v = decide(w, 0, l, MONO0, WALL0, &res);
    v = decide(w, 0, l, MONO0 + 5, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_CONCURRENCY
          && res.retry_after == 55,
          "concurrency: retry_after %lld not before the window's reset",
          (long long) res.retry_after);

    /* the release never goes below zero */

    ngx_http_ratelimit_policy_window_release(w);
    ngx_http_ratelimit_policy_window_release(w);
    check(w->inflight == 0, "concurrency: release saturates at 0");

    free(w);
}


static void
test_zero_and_unlimited(void)
{
    int        v;
    unsigned   i, n;
    result_t   res;
    window_t  *w;

    w = fresh();

    v = decide(w, 0, limits(0, 0, 0, 0), MONO0, WALL0 + 3600, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_CONCURRENCY,
          "zero: concurrency 0 refuses first (%d)", v);

    v = decide(w, 0, limits(0, 0, 0, NONE), MONO0, WALL0 + 3600, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE
          && res.retry_after == DAY - 3600
          && !res.protection_started && res.minute_remaining == 0
          && res.day_remaining == 0,
          "zero: 0 a minute refused until the day's end too (%d, %lld)", v,
          (long long) res.retry_after);

    v = decide(w, 0, limits(0, NONE, NONE, NONE), MONO0, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE && res.retry_after == 60
          && res.minute_reset == 60,
          "zero: 0 a minute, retry_after %lld",
          (long long) res.retry_after);

    v = decide(w, 0, limits(NONE, 0, NONE, NONE), MONO0, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_DAILY && res.retry_after == DAY,
          "zero: 0 a day");

    check(w->cls[0].daily == 0 && w->inflight == 0,
          "zero: nothing consumed");

    n = 0;

    for (i = 0; i < 100000; i++) {
        v = decide(w, 1, limits(NONE, NONE, NONE, NONE), MONO0 + i / 50000,
                   WALL0, &res);
        n += (v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS);
    }

    check(n == 100000 && res.minute_remaining == NONE
          && res.day_remaining == NONE && w->cls[1].daily == 100000
          && w->inflight == 100000,
          "unlimited: all pass, counted, remaining unset");

    /* a limit above what a second's slot holds: 65535 a second */

    free(w);
    w = fresh();
    n = 0;

    for (i = 0; i < 70000; i++) {
        v = decide(w, 0, limits(100000, NONE, NONE, NONE), MONO0, WALL0,
                   &res);
        n += (v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS);
    }

    check(n == 65535 && v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE
          && res.retry_after == 1,
          "saturated second: %u passed, then retry in 1 s", n);

    v = decide(w, 0, limits(100000, NONE, NONE, NONE), MONO0 + 1, WALL0,
               &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS
          && res.minute_remaining == 100000 - 65536,
          "saturated second: the next second passes");

    free(w);
}


static void
test_write_behind(void)
{
    uint32_t   day, n, today;
    unsigned   i;
    result_t   res;
    window_t  *w;

    w = fresh();
    today = (uint32_t) (WALL0 / DAY);

    for (i = 0; i < 3; i++) {
        (void) decide(w, 0, limits(NONE, 10, NONE, NONE), MONO0, WALL0,
                      &res);
    }

    n = ngx_http_ratelimit_policy_window_take(&w->cls[0], &day);
    check(n == 3 && day == today && w->cls[0].pending == 0,
          "write: take 3");
    check(ngx_http_ratelimit_policy_window_take(&w->cls[0], &day) == 0,
          "write: one row in flight per class");
    check(!ngx_http_ratelimit_policy_window_clean(w), "write: not clean");

    (void) decide(w, 0, limits(NONE, 10, NONE, NONE), MONO0, WALL0, &res);
    (void) decide(w, 0, limits(NONE, 10, NONE, NONE), MONO0, WALL0, &res);

    /* another node wrote 4 meanwhile: 3 + 4 in the database, 2 pending */

    ngx_http_ratelimit_policy_window_written(&w->cls[0], day, 7);
    check(w->cls[0].daily == 9 && w->cls[0].pending == 2
          && w->cls[0].sending == 0,
          "write: all nodes' count plus pending (%u)", w->cls[0].daily);

    (void) decide(w, 0, limits(NONE, 10, NONE, NONE), MONO0, WALL0, &res);
    check(decide(w, 0, limits(NONE, 10, NONE, NONE), MONO0, WALL0, &res)
          == NGX_HTTP_RATELIMIT_POLICY_WINDOW_DAILY,
          "write: the other node's requests count against the cap");

    /* a failed write keeps the count */

    n = ngx_http_ratelimit_policy_window_take(&w->cls[0], &day);
    ngx_http_ratelimit_policy_window_unwritten(&w->cls[0]);
    check(n == 3 && w->cls[0].pending == 3 && w->cls[0].daily == 10,
          "write: failed write, pending %u", w->cls[0].pending);

    /* a fill never lowers the count, and raises it to the database's */

    ngx_http_ratelimit_policy_window_fill(&w->cls[0], today, 1);
    check(w->cls[0].daily == 10, "fill: lower total ignored");

    n = ngx_http_ratelimit_policy_window_take(&w->cls[0], &day);
    ngx_http_ratelimit_policy_window_fill(&w->cls[0], today, 20);
    check(w->cls[0].daily == 23, "fill: 20 + 3 in flight = %u",
          w->cls[0].daily);

    ngx_http_ratelimit_policy_window_fill(&w->cls[0], today + 1, 50);
    check(w->cls[0].daily == 23, "fill: another day ignored");

    /* a write failing across midnight goes to the carry */

    (void) decide(w, 0, limits(NONE, NONE, NONE, NONE), MONO0,
                  WALL0 + DAY, &res);
    ngx_http_ratelimit_policy_window_unwritten(&w->cls[0]);
    check(w->cls[0].carry == 3 && w->cls[0].carry_day == today
          && w->cls[0].pending == 1 && w->cls[0].daily == 1,
          "write: failed write of yesterday carried (%u)",
          w->cls[0].carry);

    n = ngx_http_ratelimit_policy_window_take(&w->cls[0], &day);
    check(n == 3 && day == today, "write: carry first");
    ngx_http_ratelimit_policy_window_written(&w->cls[0], day, 100);
    check(w->cls[0].daily == 1, "write: yesterday's total not taken");

    n = ngx_http_ratelimit_policy_window_take(&w->cls[0], &day);
    check(n == 1 && day == today + 1, "write: then today");
    ngx_http_ratelimit_policy_window_written(&w->cls[0], day, 1);
    check(ngx_http_ratelimit_policy_window_clean(w), "write: clean");

    free(w);
}


static void
test_monotonic_backwards(void)
{
    int        v;
    unsigned   i;
    result_t   res;
    window_t  *w;
    limits_t   l;

    w = fresh();
    l = limits(3, NONE, NONE, NONE);

    for (i = 0; i < 3; i++) {
        (void) decide(w, 0, l, MONO0 + 100, WALL0, &res);
        ngx_http_ratelimit_policy_window_release(w);
    }

    /* the clock given is older: nothing is forgotten */

    v = decide(w, 0, l, MONO0, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE
          && res.retry_after == 160,
          "backwards: still refused, until 160 s on that clock (%d, %lld)", v,
          (long long) res.retry_after);

    v = decide(w, 0, l, MONO0 + 159, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE && res.retry_after == 1,
          "backwards: refused until 60 s after the newest second");

    v = decide(w, 0, l, MONO0 + 160, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS,
          "backwards: then it passes");

    /* a jump forward over more than a minute empties the window */

    v = decide(w, 0, l, MONO0 + 100000, WALL0, &res);
    check(v == NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS
          && res.minute_remaining == 2,
          "forward: window empty");

    free(w);
}


int
main(int argc, char **argv)
{
    unsigned  seed, trials;

    seed = (argc > 1) ? (unsigned) strtoul(argv[1], NULL, 10) : 20250601;
    trials = (argc > 2) ? (unsigned) strtoul(argv[2], NULL, 10) : 300;

    srand(seed);

    printf("window_test: seed %u, %u random sequences, %zu bytes per "
           "instance\n", seed, trials, sizeof(window_t));

    check(sizeof(ngx_http_ratelimit_policy_window_class_t) == 156,
          "class counters are %zu bytes",
          sizeof(ngx_http_ratelimit_policy_window_class_t));

    test_random_minute(trials);
    test_exact_first_minute();
    test_burst_after_pause();
    test_random_ms(trials);
    test_day_rollover();
    test_cooldown();
    test_concurrency();
    test_zero_and_unlimited();
    test_write_behind();
    test_monotonic_backwards();

    printf("%u passed, %u failed\n", passed, failed);

    return failed ? 1 : 0;
}
