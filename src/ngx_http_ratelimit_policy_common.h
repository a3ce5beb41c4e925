
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_COMMON_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_COMMON_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>


#define NGX_HTTP_RATELIMIT_POLICY_INSTANCE_LEN   12
#define NGX_HTTP_RATELIMIT_POLICY_DIGEST_LEN     32
#define NGX_HTTP_RATELIMIT_POLICY_SLUG_MAX       64

/* limits, in the column order of ratelimit.policies */
#define NGX_HTTP_RATELIMIT_POLICY_SEND_PER_MINUTE     0
#define NGX_HTTP_RATELIMIT_POLICY_SEND_DAILY          1
#define NGX_HTTP_RATELIMIT_POLICY_PROTECTION          2
#define NGX_HTTP_RATELIMIT_POLICY_CONCURRENT          3
#define NGX_HTTP_RATELIMIT_POLICY_GROUP_PER_MINUTE    4
#define NGX_HTTP_RATELIMIT_POLICY_GROUP_DAILY         5
#define NGX_HTTP_RATELIMIT_POLICY_CHECK_PER_MINUTE    6
#define NGX_HTTP_RATELIMIT_POLICY_CHECK_DAILY         7
#define NGX_HTTP_RATELIMIT_POLICY_NLIMITS             8

/* a NULL limit in the database: unlimited */
#define NGX_HTTP_RATELIMIT_POLICY_UNLIMITED           -1


typedef struct ngx_http_ratelimit_policy_pg_s  ngx_http_ratelimit_policy_pg_t;


typedef struct {
    /* ratelimit_policy_db */
    ngx_str_t                    conninfo;
    ngx_array_t                 *pg_keywords;    /* const char * */
    ngx_array_t                 *pg_values;      /* const char * */
    ngx_uint_t                   pool_size;
    ngx_uint_t                   queue_size;
    ngx_uint_t                   pipeline;       /* lookups per connection */
    ngx_msec_t                   connect_timeout;
    ngx_msec_t                   query_timeout;

    /* ratelimit_policy_zone */
    ngx_shm_zone_t              *shm_zone;

    /* ratelimit_policy_cache_ttl */
    ngx_msec_t                   cache_ttl;
    ngx_msec_t                   negative_ttl;

    /* ratelimit_policy_default */
    ngx_str_t                    default_slug;

    /* the first directive that needs the database and the zone */
    ngx_str_t                    needs_db;
    u_char                      *needs_file;
    ngx_uint_t                   needs_line;

    /* per worker */
    ngx_http_ratelimit_policy_pg_t  *pg;
} ngx_http_ratelimit_policy_main_conf_t;


typedef struct {
    ngx_http_complex_value_t    *instance;
    ngx_http_complex_value_t    *token;
    ngx_flag_t                   api;
    ngx_str_t                    engine_sync;

    /* ratelimit_policy_enforce: the class + 1, 0: not enforced */
    ngx_uint_t                   enforce;
    ngx_flag_t                   dry_run;
    ngx_int_t                    status;
    ngx_flag_t                   headers;
    ngx_uint_t                   log_level;
} ngx_http_ratelimit_policy_loc_conf_t;


extern ngx_module_t  ngx_http_ratelimit_policy_module;


#endif /* _NGX_HTTP_RATELIMIT_POLICY_COMMON_H_INCLUDED_ */
