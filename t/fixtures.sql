-- Test fixtures for the Test::Nginx suites (apply after sql/schema.sql and
-- sql/seed.sql).  Re-applied between test files: it deletes and re-inserts
-- every fixture row below and clears their daily_usage, so each file starts
-- from the same state.  Rows that are not fixtures are left alone.
--
-- Tokens are stored as sha256(convert_to(token, 'UTF8')).
--
--  account  token               plan                  instance      policy_slug
--  1001     free-token-1001     none (NULL)           FREE00000001  NULL
--                                                     FREE00000002  strict
--                                                     FREE00000003  standard_policy
--  1002     paid-token-1002     active (now()+1 year) PAID00000001  business
--                                                     PAID00000002  unlimited
--                                                     PAID00000003  NULL
--  1003     lapsed-token-1003   ended (now()-1 day)   LAPS00000001  high_throughput
--  1004     other-token-1004    none (NULL)           OTHR00000001  strict
--  1005     zero-token-1005     active (now()+1 year) ZERO00000001  zero_policy
--                                                     UNLI00000001  unlimited
--
-- Extra policy for enforcement tests (not in seed.sql):
--  id 100  zero_policy  "Zero"  paid, sort_order 1000, every limit 0
--
-- Everything in one transaction: a module LISTENing on ratelimit_policy gets
-- the notifications once, at commit, and never sees a half-applied state.

BEGIN;

INSERT INTO ratelimit.policies AS p
       (id, slug, name, description, is_free, sort_order,
        send_message_per_minute, send_message_daily_cap,
        account_protection_seconds, concurrent_limit,
        group_req_per_minute, group_daily_cap,
        check_req_per_minute, check_daily_cap)
VALUES
    (100, 'zero_policy', 'Zero',
     'Test policy: every limit is 0, nothing is allowed.',
     false, 1000,
     0, 0, 0, 0, 0, 0, 0, 0)
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

SELECT setval(pg_get_serial_sequence('ratelimit.policies', 'id'),
              greatest(5, (SELECT max(id) FROM ratelimit.policies)));

-- fixture instance ids, wherever a test may have moved them
DELETE FROM ratelimit.instances
 WHERE instance_id IN ('FREE00000001', 'FREE00000002', 'FREE00000003',
                       'PAID00000001', 'PAID00000002', 'PAID00000003',
                       'LAPS00000001', 'OTHR00000001',
                       'ZERO00000001', 'UNLI00000001');

-- fixture accounts (ON DELETE CASCADE removes any instance a test added)
DELETE FROM ratelimit.accounts
 WHERE account_id IN (1001, 1002, 1003, 1004, 1005);

DELETE FROM ratelimit.daily_usage
 WHERE instance_id IN ('FREE00000001', 'FREE00000002', 'FREE00000003',
                       'PAID00000001', 'PAID00000002', 'PAID00000003',
                       'LAPS00000001', 'OTHR00000001',
                       'ZERO00000001', 'UNLI00000001');

INSERT INTO ratelimit.accounts (account_id, access_token_sha256,
                                plan_active_until)
VALUES
    (1001, sha256(convert_to('free-token-1001', 'UTF8')),   NULL),
    (1002, sha256(convert_to('paid-token-1002', 'UTF8')),
           now() + interval '1 year'),
    (1003, sha256(convert_to('lapsed-token-1003', 'UTF8')),
           now() - interval '1 day'),
    (1004, sha256(convert_to('other-token-1004', 'UTF8')),  NULL),
    (1005, sha256(convert_to('zero-token-1005', 'UTF8')),
           now() + interval '1 year');

INSERT INTO ratelimit.instances (instance_id, account_id, policy_slug)
VALUES
    ('FREE00000001', 1001, NULL),
    ('FREE00000002', 1001, 'strict'),
    ('FREE00000003', 1001, 'standard_policy'),
    ('PAID00000001', 1002, 'business'),
    ('PAID00000002', 1002, 'unlimited'),
    ('PAID00000003', 1002, NULL),
    ('LAPS00000001', 1003, 'high_throughput'),
    ('OTHR00000001', 1004, 'strict'),
    ('ZERO00000001', 1005, 'zero_policy'),
    ('UNLI00000001', 1005, 'unlimited');

COMMIT;
