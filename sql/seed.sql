-- ngx_http_ratelimit_policy_module: the five default policies.
--
-- Apply after sql/schema.sql:  psql -v ON_ERROR_STOP=1 -f sql/seed.sql DBNAME
-- Idempotent: re-applying resets these five policies (matched by slug) to the
-- values below and leaves every other policy alone.  NULL = unlimited.
--
--  id slug             free  msg/min msg/day prot conc grp/min grp/day chk/min chk/day
--   1 strict           yes        8     200   60    1       -       -       -       -
--   2 standard_policy  yes       20    1000   30    2      10     200      20     500
--   3 business         no        60   10000   15    5      30    2000      60    5000
--   4 high_throughput  no       300  100000    5   20     120   20000     300   50000
--   5 unlimited        no         -       -    -    -       -       -       -       -

BEGIN;

INSERT INTO ratelimit.policies AS p
       (id, slug, name, description, is_free, sort_order,
        send_message_per_minute, send_message_daily_cap,
        account_protection_seconds, concurrent_limit,
        group_req_per_minute, group_daily_cap,
        check_req_per_minute, check_daily_cap)
VALUES
    (1, 'strict', 'Strict',
     'Conservative limits for fresh or sensitive accounts.',
     true, 10,
     8, 200, 60, 1, NULL, NULL, NULL, NULL),
    (2, 'standard_policy', 'Standard',
     'Balanced limits for everyday messaging; the default for new sessions.',
     true, 20,
     20, 1000, 30, 2, 10, 200, 20, 500),
    (3, 'business', 'Business',
     'Higher limits for established business accounts with an active plan.',
     false, 30,
     60, 10000, 15, 5, 30, 2000, 60, 5000),
    (4, 'high_throughput', 'High throughput',
     'Bulk-capable limits for high-volume senders with a warmed-up number.',
     false, 40,
     300, 100000, 5, 20, 120, 20000, 300, 50000),
    (5, 'unlimited', 'Unlimited',
     'No limits enforced by the gateway; use with care.',
     false, 50,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
ON CONFLICT (slug) DO UPDATE SET
    name                       = EXCLUDED.name,
    description                = EXCLUDED.description,
    is_free                    = EXCLUDED.is_free,
    sort_order                 = EXCLUDED.sort_order,
    send_message_per_minute    = EXCLUDED.send_message_per_minute,
    send_message_daily_cap     = EXCLUDED.send_message_daily_cap,
    account_protection_seconds = EXCLUDED.account_protection_seconds,
    concurrent_limit           = EXCLUDED.concurrent_limit,
    group_req_per_minute       = EXCLUDED.group_req_per_minute,
    group_daily_cap            = EXCLUDED.group_daily_cap,
    check_req_per_minute       = EXCLUDED.check_req_per_minute,
    check_daily_cap            = EXCLUDED.check_daily_cap;

-- explicit ids do not advance the identity sequence: move it past them so
-- that policies added later without an id do not collide
SELECT setval(pg_get_serial_sequence('ratelimit.policies', 'id'),
              greatest(5, (SELECT max(id) FROM ratelimit.policies)));

COMMIT;
