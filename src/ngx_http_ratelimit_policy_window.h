
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * The window arithmetic of enforcement, free of nginx: plain C types, the
 * clocks passed in, no locking, no allocation.  The caller holds the zone
 * lock around every call that takes a counters structure.
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_WINDOW_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_WINDOW_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


#define NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOTS   60
#define NGX_HTTP_RATELIMIT_POLICY_WINDOW_DAY     86400
#define NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOT_MAX  65535

/* request classes */
#define NGX_HTTP_RATELIMIT_POLICY_SEND_MESSAGE   0
#define NGX_HTTP_RATELIMIT_POLICY_GROUP          1
#define NGX_HTTP_RATELIMIT_POLICY_CHECK          2
#define NGX_HTTP_RATELIMIT_POLICY_NCLASSES       3

/* verdicts, in the order the checks are made */
#define NGX_HTTP_RATELIMIT_POLICY_WINDOW_PASS           0
#define NGX_HTTP_RATELIMIT_POLICY_WINDOW_PROTECTION     1
#define NGX_HTTP_RATELIMIT_POLICY_WINDOW_CONCURRENCY    2
#define NGX_HTTP_RATELIMIT_POLICY_WINDOW_MINUTE         3
#define NGX_HTTP_RATELIMIT_POLICY_WINDOW_DAILY          4

/* a limit that is not set (NULL in the database) */
#define NGX_HTTP_RATELIMIT_POLICY_WINDOW_NONE    -1


/*
 * One class of one instance: 156 bytes.
 *
 * The minute window is a ring of 60 per-second admission counts on the
 * monotonic clock: slot[s % 60] holds second s for the 60 seconds up to
 * "sec", and "total" their sum.  A request in second t is admitted when
 * the 60 seconds t-59..t hold fewer admissions than the limit, so no
 * 60-second window ever holds more, and nothing that fits is refused.
 * The seconds start "phase" milliseconds into a second of the clock: the
 * first admission into an empty window sets it, so that a burst after a
 * pause gets its next request no earlier than 60.000 s after its first.
 *
 * The day is the UTC calendar day (days since 1970-01-01) of the wall
 * clock.  "daily" is the best known count of all nodes for "day": what the
 * database said plus what this node admitted since.  "pending" is what
 * this node admitted and did not write yet, "sending" what is being
 * written (for "sending_day"), "carry" what is left unwritten of an
 * earlier day ("carry_day").
 */

typedef struct {
    uint32_t                      sec;
    uint32_t                      daily;
    uint32_t                      pending;
    uint32_t                      sending;
    uint32_t                      carry;
    uint32_t                      total;
    uint16_t                      day;
    uint16_t                      sending_day;
    uint16_t                      carry_day;
    uint16_t                      lost;
    uint16_t                      phase;
    uint16_t                      slot[NGX_HTTP_RATELIMIT_POLICY_WINDOW_SLOTS];
} ngx_http_ratelimit_policy_window_class_t;


/*
 * One instance: 480 bytes.  What every enforced request reads comes
 * first: the cool-down, the requests in flight, then the first class
 * (send_message), its counts before its slots.  In the zone, after the
 * 32 bytes that ngx_http_ratelimit_policy_counters_t puts first, that
 * is the chunk's first three cache lines, but for the class's last three
 * slots; before, the cool-down and the requests in flight came last, in
 * a line of their own, one more cache miss for every request.
 */

typedef struct {
    uint64_t                      protect_until;   /* monotonic msec */
    uint32_t                      inflight;
    ngx_http_ratelimit_policy_window_class_t
                                  cls[NGX_HTTP_RATELIMIT_POLICY_NCLASSES];
} ngx_http_ratelimit_policy_window_t;


/* a policy's limits for one class; NONE: unlimited */

typedef struct {
    int64_t                       per_minute;
    int64_t                       daily;
    int64_t                       protection;      /* seconds */
    int64_t                       concurrent;
} ngx_http_ratelimit_policy_window_limits_t;


typedef struct {
    int                           verdict;
    unsigned                      protection_started:1;

    /* rejected: seconds until a retry can pass (at least 1) */
    int64_t                       retry_after;

    /* after the decision (an admitted request included); NONE: unlimited */
    int64_t                       minute_limit;
    int64_t                       minute_remaining;
    int64_t                       minute_reset;
    int64_t                       day_limit;
    int64_t                       day_remaining;
    int64_t                       day_reset;
} ngx_http_ratelimit_policy_window_result_t;


/*
 * The checks in order (protection, concurrency, minute, day) and, when
 * they all pass, the commit of the minute slot, the day count, the
 * pending count and the in-flight count: one step.  A request rejected by
 * the minute or the day limit starts the protection cool-down; a rejected
 * request consumes nothing else.  "mono" is a monotonic clock in
 * milliseconds, "wall" the Unix time in seconds.  Returns the verdict.
 */
int ngx_http_ratelimit_policy_window_decide(
    ngx_http_ratelimit_policy_window_t *w, unsigned cls,
    const ngx_http_ratelimit_policy_window_limits_t *lim, uint64_t mono,
    int64_t wall, ngx_http_ratelimit_policy_window_result_t *res);

/* an admitted request is finished */
void ngx_http_ratelimit_policy_window_release(
    ngx_http_ratelimit_policy_window_t *w);

/*
 * the minute window's count at "mono" (msec); in seconds, when a request
 * may pass again (retry) and when the window next gives one back (reset)
 */
uint32_t ngx_http_ratelimit_policy_window_minute(
    ngx_http_ratelimit_policy_window_class_t *c, uint64_t mono,
    int64_t limit, int64_t *retry, int64_t *reset);

/* moves the day forward (never back), keeping unwritten counts */
void ngx_http_ratelimit_policy_window_day(
    ngx_http_ratelimit_policy_window_class_t *c, uint32_t day);

/* the UTC day of a Unix time */
uint32_t ngx_http_ratelimit_policy_window_today(int64_t wall);

/*
 * Write-behind.  take: what to write next (one row per class and batch),
 * 0 if nothing; written: the database now holds "total" for "day" (all
 * nodes); unwritten: the write failed, keep the count for the next one;
 * fill: the database said "total" for "day" (a cache fill).
 */
uint32_t ngx_http_ratelimit_policy_window_take(
    ngx_http_ratelimit_policy_window_class_t *c, uint32_t *day);
void ngx_http_ratelimit_policy_window_written(
    ngx_http_ratelimit_policy_window_class_t *c, uint32_t day,
    int64_t total);
void ngx_http_ratelimit_policy_window_unwritten(
    ngx_http_ratelimit_policy_window_class_t *c);
void ngx_http_ratelimit_policy_window_fill(
    ngx_http_ratelimit_policy_window_class_t *c, uint32_t day,
    int64_t total);

/* nothing is waiting to be written */
int ngx_http_ratelimit_policy_window_clean(
    ngx_http_ratelimit_policy_window_t *w);


#endif /* _NGX_HTTP_RATELIMIT_POLICY_WINDOW_H_INCLUDED_ */
