
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * The window arithmetic of enforcement.  No nginx headers: the unit is
 * built and tested on its own by t/unit/window_test.c, with the clocks
 * injected.
 *
 * Clocks.  The minute window and the protection cool-down run on a
 * monotonic clock (nginx's ngx_current_msec / 1000, which is shared by all
 * workers of a host): a wall clock stepped back would otherwise freeze the
 * window, and a clock stepped forward would empty it.  Should the
 * monotonic clock given ever be older than the newest second counted, the
 * newest second is used, so counts are never lost.  The daily cap runs on
 * the UTC calendar day of the wall clock, which never moves back either:
 * a wall clock stepped back across midnight keeps counting on the later
 * day.
 */


#include <string.h>
#include "ngx_http_ratelimit_policy_window.h"


#define ngx_http_ratelimit_policy_window_max(a, b)  ((a) > (b) ? (a) : (b))


static uint32_t ngx_http_ratelimit_policy_window_second(
    ngx_http_ratelimit_policy_window_class_t *c, uint64_t mono);
static int64_t ngx_http_ratelimit_policy_window_wait(
    ngx_http_ratelimit_policy_window_class_t *c, uint64_t mono, uint32_t n);
static void ngx_http_ratelimit_policy_window_advance(
    ngx_http_ratelimit_policy_window_class_t *c, uint64_t mono);
static void ngx_http_ratelimit_policy_window_protect(
    ngx_http_ratelimit_policy_window_t *w,
    const ngx_http_ratelimit_policy_window_limits_t *lim, uint64_t mono,
    ngx_http_ratelimit_policy_window_result_t *res);


uint32_t
ngx_http_ratelimit_policy_window_today(int64_t wall)
{
    if (wall < 0) {
        return 0;
    }

    return (uint32_t) (wall / NGX_HTTP_RATELIMIT_POLICY_WINDOW_DAY);
}


void
ngx_http_ratelimit_policy_window_day(
    ngx_http_ratelimit_policy_window_class_t *c, uint32_t day)
{
    if (day <= c->day) {
        return;
    }

    if (c->pending) {

        if (c->carry && c->carry_day != c->day) {
            /* a third day with nothing written: the oldest count goes */
            c->lost++;
            c->carry = 0;
        }

        c->carry += c->pending;
        c->carry_day = c->day;
        c->pending = 0;
    }

    c->daily = 0;
    c->day = (uint16_t) day;
}


static uint32_t
ngx_http_ratelimit_policy_window_second(
    ngx_http_ratelimit_policy_window_class_t *c, uint64_t mono)
{
    if (mono < c->phase) {
        return 0;
    }

    return (uint32_t) ((mono - c->phase) / 1000);
}


/* seconds from "mono" until the window's second c->sec + n begins */

static int64_t
ngx_http_ratelimit_policy_window_wait(
    ngx_http_ratelimit_policy_window_class_t *c, uint64_t mono, uint32_t n)
{
    uint64_t  at;

    at = ((uint64_t) c->sec + n) * 1000 + c->phase;

    if (at <= mono) {
        return 0;
    }

    return (int64_t) ((at - mono + 999) / 1000);
}


/* moves the ring forward to "mono", clearing the seconds passed */

static void
ngx_http_ratelimit_policy_window_advance(
    ngx_http_ratelimit_policy_window_class_t *c, uint64_t mono)
{
    uint32_t  now, gap, i, k;

    now = ngx_http_ratelimit_policy_window_second(c, mono);

    if (now <= c->sec) {
        return;
    }

    gap = now - c->sec;

    if (gap >= NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOTS) {
        memset(c->slot, 0, sizeof(c->slot));
        c->total = 0;

    } else {
        i = (c->sec + 1) % NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOTS;

        for (k = 0; k < gap; k++) {
            c->total = (c->total > c->slot[i]) ? c->total - c->slot[i] : 0;
            c->slot[i] = 0;

            if (++i == NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOTS) {
                i = 0;
            }
        }
    }

    c->sec = now;
}


uint32_t
ngx_http_ratelimit_policy_window_minute(
    ngx_http_ratelimit_policy_window_class_t *c, uint64_t mono,
    int64_t limit, int64_t *retry, int64_t *reset)
{
    uint32_t  sum, acc, v, i, k;

    ngx_http_ratelimit_policy_window_advance(c, mono);

    sum = c->total;

    *reset = 0;

    if (limit == 0) {
        *retry = NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOTS;

    } else if (limit < 0 || (int64_t) sum < limit) {
        *retry = 0;

    } else {
        *retry = -1;
    }

    /*
     * the oldest second of the window, c->sec - 59, leaves it first: when
     * second c->sec + k + 1 begins, seconds c->sec - 59 .. c->sec - 59 + k
     * are gone
     */

    acc = 0;
    i = (c->sec + 1) % NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOTS;

    for (k = 0; k < NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOTS && acc < sum; k++) {
        v = c->slot[i];

        if (++i == NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOTS) {
            i = 0;
        }

        if (v == 0) {
            continue;
        }

        if (*reset == 0) {
            *reset = ngx_http_ratelimit_policy_window_wait(c, mono, k + 1);
        }

        acc += v;

        if (*retry < 0 && (int64_t) (sum - acc) < limit) {
            *retry = ngx_http_ratelimit_policy_window_wait(c, mono, k + 1);
        }

        if (*retry >= 0) {
            break;
        }
    }

    if (*retry < 0) {
        /* not reached: the whole window leaves after 60 seconds */
        *retry = ngx_http_ratelimit_policy_window_wait(c, mono,
                                      NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOTS);
    }

    return sum;
}


int
ngx_http_ratelimit_policy_window_decide(ngx_http_ratelimit_policy_window_t *w,
    unsigned cls, const ngx_http_ratelimit_policy_window_limits_t *lim,
    uint64_t mono, int64_t wall, ngx_http_ratelimit_policy_window_result_t *res)
{
    int                                        minute_full, day_full;
    int64_t                                    retry, reset, floor, dreset;
    uint32_t                                   sum, now;
    uint16_t                                  *slot;
    ngx_http_ratelimit_policy_window_class_t  *c;

    c = &w->cls[cls];

    ngx_http_ratelimit_policy_window_day(c,
                                  ngx_http_ratelimit_policy_window_today(wall));

    ngx_http_ratelimit_policy_window_advance(c, mono);

    sum = c->total;
    slot = &c->slot[c->sec % NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOTS];

    minute_full = lim->per_minute >= 0
                  && ((int64_t) sum >= lim->per_minute
                      || *slot == NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOT_MAX);

    day_full = lim->daily >= 0 && (int64_t) c->daily >= lim->daily;

    if (w->protect_until > mono) {
        res->verdict = NGX_HTTP_RATELIMIT_POLICY_WINDOW_PROTECTION;

    } else if (lim->concurrent >= 0
               && (int64_t) w->inflight >= lim->concurrent)
    {
        res->verdict = NGX_HTTP_RATELIMIT_POLICY_WINDOW_CONCURRENCY;

    } else if (minute_full) {
        res->verdict = NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE;

    } else if (day_full) {
        res->verdict = NGX_HTTP_RATELIMIT_POLICY_WINDOW_DAILY;

    } else {
        res->verdict = NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS;

        if (sum == 0) {
            /* an empty window: its seconds start now */

            now = (uint32_t) (mono / 1000);

            if (now >= c->sec) {
                c->phase = (uint16_t) (mono % 1000);
                c->sec = now;
                slot = &c->slot[now % NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOTS];
            }
        }

        /* the commit: a few word writes */

        if (*slot < NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOT_MAX) {
            (*slot)++;
            c->total++;
        }

        if (c->daily != UINT32_MAX) {
            c->daily++;
        }

        if (c->pending != UINT32_MAX) {
            c->pending++;
        }

        w->inflight++;
    }

    /*
     * when the windows reset, after the commit; an unlimited minute has
     * nothing to tell (and the ring was advanced above): no scan
     */

    if (lim->per_minute >= 0) {
        sum = ngx_http_ratelimit_policy_window_minute(c, mono, lim->per_minute,
                                                      &retry, &reset);

    } else {
        sum = c->total;
        retry = 0;
        reset = 0;
    }

    if (minute_full && (int64_t) sum < lim->per_minute) {
        /* this second's count is saturated: the next second will do */
        retry = ngx_http_ratelimit_policy_window_wait(c, mono, 1);
    }

    dreset = (int64_t) (c->day + 1) * NGX_HTTP_RATELIMIT_POLICY_WINDOW_DAY
             - wall;

    if (dreset < 1) {
        dreset = 1;
    }

    /* a retry is never told to come before an exhausted window resets */

    floor = minute_full ? retry : 0;

    if (day_full) {
        floor = ngx_http_ratelimit_policy_window_max(floor, dreset);
    }

    res->protection_started = 0;

    switch (res->verdict) {

    case NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS:
        res->retry_after = 0;
        break;

    case NGX_HTTP_RATELIMIT_POLICY_WINDOW_PROTECTION:
        res->retry_after = ngx_http_ratelimit_policy_window_max(
                               (int64_t) ((w->protect_until - mono + 999)
                                          / 1000),
                               floor);
        break;

    case NGX_HTTP_RATELIMIT_POLICY_WINDOW_CONCURRENCY:
        res->retry_after = ngx_http_ratelimit_policy_window_max(1, floor);
        break;

    default: /* MINUTE, DAILY */
        res->retry_after = floor;
        ngx_http_ratelimit_policy_window_protect(w, lim, mono, res);
        break;
    }

    if (res->retry_after < 1 && res->verdict) {
        res->retry_after = 1;
    }

    /* what the headers say */

    res->minute_limit = lim->per_minute;
    res->minute_remaining = NGX_HTTP_RATELIMIT_POLICY_WINDOW_NONE;
    res->minute_reset = 0;

    if (lim->per_minute >= 0) {
        res->minute_remaining = lim->per_minute - (int64_t) sum;

        if (res->minute_remaining <= 0) {
            res->minute_remaining = 0;
            res->minute_reset = (retry > 0) ? retry : reset;

        } else {
            res->minute_reset = reset;
        }
    }

    res->day_limit = lim->daily;
    res->day_remaining = NGX_HTTP_RATELIMIT_POLICY_WINDOW_NONE;
    res->day_reset = dreset;

    if (lim->daily >= 0) {
        res->day_remaining = lim->daily - (int64_t) c->daily;

        if (res->day_remaining < 0) {
            res->day_remaining = 0;
        }
    }

    return res->verdict;
}


static void
ngx_http_ratelimit_policy_window_protect(ngx_http_ratelimit_policy_window_t *w,
    const ngx_http_ratelimit_policy_window_limits_t *lim, uint64_t mono,
    ngx_http_ratelimit_policy_window_result_t *res)
{
    uint64_t  until;

    if (lim->protection <= 0) {
        return;
    }

    until = mono + (uint64_t) lim->protection * 1000;

    if (until > w->protect_until) {
        w->protect_until = until;
    }

    res->protection_started = 1;
    res->retry_after = ngx_http_ratelimit_policy_window_max(res->retry_after,
                                                           lim->protection);
}


void
ngx_http_ratelimit_policy_window_release(ngx_http_ratelimit_policy_window_t *w)
{
    if (w->inflight) {
        w->inflight--;
    }
}


uint32_t
ngx_http_ratelimit_policy_window_take(
    ngx_http_ratelimit_policy_window_class_t *c, uint32_t *day)
{
    if (c->sending) {
        return 0;
    }

    if (c->carry) {
        c->sending = c->carry;
        c->sending_day = c->carry_day;
        c->carry = 0;

    } else if (c->pending) {
        c->sending = c->pending;
        c->sending_day = c->day;
        c->pending = 0;

    } else {
        return 0;
    }

    *day = c->sending_day;

    return c->sending;
}


void
ngx_http_ratelimit_policy_window_written(
    ngx_http_ratelimit_policy_window_class_t *c, uint32_t day, int64_t total)
{
    if (c->sending == 0 || c->sending_day != day) {
        return;
    }

    c->sending = 0;

    if (day != c->day || total < 0) {
        /* an earlier day's count: written, nothing else to learn */
        return;
    }

    /* all nodes' count, and what was admitted here since the batch left */

    total += c->pending;

    c->daily = (total > UINT32_MAX) ? UINT32_MAX : (uint32_t) total;
}


void
ngx_http_ratelimit_policy_window_unwritten(
    ngx_http_ratelimit_policy_window_class_t *c)
{
    if (c->sending == 0) {
        return;
    }

    if (c->sending_day == c->day) {
        c->pending += c->sending;

    } else if (c->carry == 0 || c->carry_day == c->sending_day) {
        c->carry += c->sending;
        c->carry_day = c->sending_day;

    } else {
        c->lost++;
    }

    c->sending = 0;
}


void
ngx_http_ratelimit_policy_window_fill(
    ngx_http_ratelimit_policy_window_class_t *c, uint32_t day, int64_t total)
{
    if (day != c->day || total < 0) {
        return;
    }

    /*
     * the database may or may not hold what is being written now; count
     * it as not held: a fill never lowers the count
     */

    total += c->pending;

    if (c->sending_day == day) {
        total += c->sending;
    }

    if (total > (int64_t) c->daily) {
        c->daily = (total > UINT32_MAX) ? UINT32_MAX : (uint32_t) total;
    }
}


int
ngx_http_ratelimit_policy_window_clean(ngx_http_ratelimit_policy_window_t *w)
{
    unsigned  k;

    for (k = 0; k < NGX_HTTP_RATELIMIT_POLICY_NCLASSES; k++) {
        if (w->cls[k].pending || w->cls[k].sending || w->cls[k].carry) {
            return 0;
        }
    }

    return 1;
}
