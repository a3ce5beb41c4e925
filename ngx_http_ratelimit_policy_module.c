
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * Per-instance rate-limit policies for a WhatsApp API gateway: the policy
 * API, entitlements from PostgreSQL cached in shared memory, enforcement.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include "ngx_http_ratelimit_policy_common.h"
#include "ngx_http_ratelimit_policy_api.h"
#include "ngx_http_ratelimit_policy_cache.h"
#include "ngx_http_ratelimit_policy_enforce.h"
#include "ngx_http_ratelimit_policy_metrics.h"
#include "ngx_http_ratelimit_policy_pg.h"
#include "ngx_http_ratelimit_policy_shm.h"
#include "ngx_http_ratelimit_policy_variables.h"
#include "ngx_http_ratelimit_policy_usage.h"
#include "ngx_http_ratelimit_policy_variables.h"
#include "ngx_http_ratelimit_policy_window.h"


#define NGX_HTTP_RATELIMIT_POLICY_DEFAULT_SLUG  "standard_policy"


static ngx_int_t ngx_http_ratelimit_policy_preconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_ratelimit_policy_postconfiguration(ngx_conf_t *cf);
static void *ngx_http_ratelimit_policy_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_ratelimit_policy_init_main_conf(ngx_conf_t *cf,
    void *conf);
static void *ngx_http_ratelimit_policy_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_ratelimit_policy_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
static char *ngx_http_ratelimit_policy_db(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_ratelimit_policy_db_number(ngx_conf_t *cf,
    ngx_str_t *value, size_t skip, ngx_int_t min, ngx_int_t max,
    const char *what, ngx_uint_t *out);
static char *ngx_http_ratelimit_policy_zone(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_ratelimit_policy_cache_ttl(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_ratelimit_policy_default(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_ratelimit_policy_api(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_ratelimit_policy_metrics(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static char *ngx_http_ratelimit_policy_enforce(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
static void ngx_http_ratelimit_policy_needs_db(ngx_conf_t *cf,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf);
static ngx_int_t ngx_http_ratelimit_policy_init_process(ngx_cycle_t *cycle);
static void ngx_http_ratelimit_policy_exit_process(ngx_cycle_t *cycle);
static void ngx_http_ratelimit_policy_notified(void *data, u_char *payload,
    size_t len, int pid);


static ngx_conf_enum_t  ngx_http_ratelimit_policy_classes[] = {
    { ngx_string("send_message"), NGX_HTTP_RATELIMIT_POLICY_SEND_MESSAGE + 1 },
    { ngx_string("group"), NGX_HTTP_RATELIMIT_POLICY_GROUP + 1 },
    { ngx_string("check"), NGX_HTTP_RATELIMIT_POLICY_CHECK + 1 },
    { ngx_null_string, 0 }
};


static ngx_conf_enum_t  ngx_http_ratelimit_policy_log_levels[] = {
    { ngx_string("info"), NGX_LOG_INFO },
    { ngx_string("notice"), NGX_LOG_NOTICE },
    { ngx_string("warn"), NGX_LOG_WARN },
    { ngx_string("error"), NGX_LOG_ERR },
    { ngx_null_string, 0 }
};


static ngx_conf_num_bounds_t  ngx_http_ratelimit_policy_status_bounds = {
    ngx_conf_check_num_bounds, 400, 599
};


static ngx_command_t  ngx_http_ratelimit_policy_commands[] = {

    { ngx_string("ratelimit_policy_db"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_1MORE,
      ngx_http_ratelimit_policy_db,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_policy_zone"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_ratelimit_policy_zone,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_policy_instance"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_policy_loc_conf_t, instance),
      NULL },

    { ngx_string("ratelimit_policy_token"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_set_complex_value_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_policy_loc_conf_t, token),
      NULL },

    { ngx_string("ratelimit_policy_cache_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_ratelimit_policy_cache_ttl,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_policy_default"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_ratelimit_policy_default,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_policy_engine_sync"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_policy_loc_conf_t, engine_sync),
      NULL },

    { ngx_string("ratelimit_policy_api"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_ratelimit_policy_api,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_policy_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_ratelimit_policy_metrics,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("ratelimit_policy_enforce"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_ratelimit_policy_enforce,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_policy_loc_conf_t, enforce),
      &ngx_http_ratelimit_policy_classes },

    { ngx_string("ratelimit_policy_dry_run"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_policy_loc_conf_t, dry_run),
      NULL },

    { ngx_string("ratelimit_policy_status"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_policy_loc_conf_t, status),
      &ngx_http_ratelimit_policy_status_bounds },

    { ngx_string("ratelimit_policy_headers"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_policy_loc_conf_t, headers),
      NULL },

    { ngx_string("ratelimit_policy_log_level"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_enum_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_ratelimit_policy_loc_conf_t, log_level),
      &ngx_http_ratelimit_policy_log_levels },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_ratelimit_policy_module_ctx = {
    ngx_http_ratelimit_policy_preconfiguration,   /* preconfiguration */
    ngx_http_ratelimit_policy_postconfiguration,  /* postconfiguration */

    ngx_http_ratelimit_policy_create_main_conf,   /* create main conf */
    ngx_http_ratelimit_policy_init_main_conf,     /* init main configuration */

    NULL,                                         /* create server conf */
    NULL,                                         /* merge server conf */

    ngx_http_ratelimit_policy_create_loc_conf,    /* create location conf */
    ngx_http_ratelimit_policy_merge_loc_conf      /* merge location conf */
};


ngx_module_t  ngx_http_ratelimit_policy_module = {
    NGX_MODULE_V1,
    &ngx_http_ratelimit_policy_module_ctx,        /* module context */
    ngx_http_ratelimit_policy_commands,           /* module directives */
    NGX_HTTP_MODULE,                              /* module type */
    NULL,                                         /* init master */
    NULL,                                         /* init module */
    ngx_http_ratelimit_policy_init_process,       /* init process */
    NULL,                                         /* init thread */
    NULL,                                         /* exit thread */
    ngx_http_ratelimit_policy_exit_process,       /* exit process */
    NULL,                                         /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_int_t
ngx_http_ratelimit_policy_preconfiguration(ngx_conf_t *cf)
{
    return ngx_http_ratelimit_policy_add_variables(cf);
}


static ngx_int_t
ngx_http_ratelimit_policy_postconfiguration(ngx_conf_t *cf)
{
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    if (ngx_http_ratelimit_policy_enforce_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    rpmcf = ngx_http_conf_get_module_main_conf(cf,
                                             ngx_http_ratelimit_policy_module);

    if (rpmcf->needs_db.len == 0) {
        return NGX_OK;
    }

    if (ngx_http_ratelimit_policy_mask_variable(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (rpmcf->conninfo.len == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"%V\" requires \"ratelimit_policy_db\" in %s:%ui",
                      &rpmcf->needs_db, rpmcf->needs_file,
                      rpmcf->needs_line);
        return NGX_ERROR;
    }

    if (rpmcf->shm_zone == NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"%V\" requires \"ratelimit_policy_zone\" in %s:%ui",
                      &rpmcf->needs_db, rpmcf->needs_file,
                      rpmcf->needs_line);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static void *
ngx_http_ratelimit_policy_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    rpmcf = ngx_pcalloc(cf->pool,
                        sizeof(ngx_http_ratelimit_policy_main_conf_t));
    if (rpmcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     rpmcf->conninfo = { 0, NULL };
     *     rpmcf->pg_keywords = NULL;
     *     rpmcf->pg_values = NULL;
     *     rpmcf->shm_zone = NULL;
     *     rpmcf->default_slug = { 0, NULL };
     *     rpmcf->needs_db = { 0, NULL };
     *     rpmcf->pg = NULL;
     */

    rpmcf->pool_size = NGX_CONF_UNSET_UINT;
    rpmcf->queue_size = NGX_CONF_UNSET_UINT;
    rpmcf->pipeline = NGX_CONF_UNSET_UINT;
    rpmcf->connect_timeout = NGX_CONF_UNSET_MSEC;
    rpmcf->query_timeout = NGX_CONF_UNSET_MSEC;
    rpmcf->cache_ttl = NGX_CONF_UNSET_MSEC;
    rpmcf->negative_ttl = NGX_CONF_UNSET_MSEC;

    return rpmcf;
}


static char *
ngx_http_ratelimit_policy_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf = conf;

    ngx_conf_init_uint_value(rpmcf->pool_size, 4);
    ngx_conf_init_uint_value(rpmcf->queue_size, 256);
    ngx_conf_init_uint_value(rpmcf->pipeline, 8);
    ngx_conf_init_msec_value(rpmcf->connect_timeout, 3000);
    ngx_conf_init_msec_value(rpmcf->query_timeout, 3000);
    ngx_conf_init_msec_value(rpmcf->cache_ttl, 30000);
    ngx_conf_init_msec_value(rpmcf->negative_ttl, 5000);

    if (rpmcf->default_slug.data == NULL) {
        ngx_str_set(&rpmcf->default_slug,
                    NGX_HTTP_RATELIMIT_POLICY_DEFAULT_SLUG);
    }

    return NGX_CONF_OK;
}


static void *
ngx_http_ratelimit_policy_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_ratelimit_policy_loc_conf_t  *rpcf;

    rpcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_ratelimit_policy_loc_conf_t));
    if (rpcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     rpcf->instance = NULL;
     *     rpcf->token = NULL;
     *     rpcf->engine_sync = { 0, NULL };
     */

    rpcf->api = NGX_CONF_UNSET;
    rpcf->enforce = NGX_CONF_UNSET_UINT;
    rpcf->dry_run = NGX_CONF_UNSET;
    rpcf->status = NGX_CONF_UNSET;
    rpcf->headers = NGX_CONF_UNSET;
    rpcf->log_level = NGX_CONF_UNSET_UINT;

    return rpcf;
}


static char *
ngx_http_ratelimit_policy_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_ratelimit_policy_loc_conf_t  *prev = parent;
    ngx_http_ratelimit_policy_loc_conf_t  *conf = child;

    if (conf->instance == NULL) {
        conf->instance = prev->instance;
    }

    if (conf->token == NULL) {
        conf->token = prev->token;
    }

    ngx_conf_merge_value(conf->api, prev->api, 0);
    ngx_conf_merge_uint_value(conf->enforce, prev->enforce, 0);
    ngx_conf_merge_value(conf->dry_run, prev->dry_run, 0);
    ngx_conf_merge_value(conf->status, prev->status,
                         NGX_HTTP_TOO_MANY_REQUESTS);
    ngx_conf_merge_value(conf->headers, prev->headers, 1);
    ngx_conf_merge_uint_value(conf->log_level, prev->log_level, NGX_LOG_ERR);
    ngx_conf_merge_str_value(conf->engine_sync, prev->engine_sync, "");

    if (conf->engine_sync.len && conf->engine_sync.data[0] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ratelimit_policy_engine_sync \"%V\" must be "
                           "a URI starting with \"/\"", &conf->engine_sync);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_ratelimit_policy_db(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf = conf;

    ngx_str_t   *value, s;
    ngx_msec_t   ms;
    ngx_uint_t   i;

    if (rpmcf->conninfo.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "empty connection string");
        return NGX_CONF_ERROR;
    }

    for (i = 2; i < cf->args->nelts; i++) {

        if (ngx_strncmp(value[i].data, "pool=", 5) == 0) {

            if (ngx_http_ratelimit_policy_db_number(cf, &value[i], 5, 1, 256,
                                                    "pool size",
                                                    &rpmcf->pool_size)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "queue=", 6) == 0) {

            if (ngx_http_ratelimit_policy_db_number(cf, &value[i], 6, 0, 65536,
                                                    "queue size",
                                                    &rpmcf->queue_size)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "pipeline=", 9) == 0) {

            if (ngx_http_ratelimit_policy_db_number(cf, &value[i], 9, 1, 256,
                                                    "pipeline depth",
                                                    &rpmcf->pipeline)
                != NGX_OK)
            {
                return NGX_CONF_ERROR;
            }

            continue;
        }

        if (ngx_strncmp(value[i].data, "connect_timeout=", 16) == 0) {

            s.data = value[i].data + 16;
            s.len = value[i].len - 16;

            ms = ngx_parse_time(&s, 0);
            if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid connect_timeout \"%V\"",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            rpmcf->connect_timeout = ms;
            continue;
        }

        if (ngx_strncmp(value[i].data, "query_timeout=", 14) == 0) {

            s.data = value[i].data + 14;
            s.len = value[i].len - 14;

            ms = ngx_parse_time(&s, 0);
            if (ms == (ngx_msec_t) NGX_ERROR || ms == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid query_timeout \"%V\"",
                                   &value[i]);
                return NGX_CONF_ERROR;
            }

            rpmcf->query_timeout = ms;
            continue;
        }

        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[i]);
        return NGX_CONF_ERROR;
    }

    ngx_conf_init_msec_value(rpmcf->query_timeout, 3000);

    rpmcf->conninfo = value[1];

    return ngx_http_ratelimit_policy_pg_conninfo(cf, rpmcf, &value[1]);
}


/* "name=N", N from min to max; skip: the length of "name=" */

static ngx_int_t
ngx_http_ratelimit_policy_db_number(ngx_conf_t *cf, ngx_str_t *value,
    size_t skip, ngx_int_t min, ngx_int_t max, const char *what,
    ngx_uint_t *out)
{
    ngx_int_t  n;

    n = ngx_atoi(value->data + skip, value->len - skip);

    if (n == NGX_ERROR || n < min || n > max) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid %s \"%V\", it must be from %i to %i",
                           what, value, min, max);
        return NGX_ERROR;
    }

    *out = (ngx_uint_t) n;

    return NGX_OK;
}


static char *
ngx_http_ratelimit_policy_zone(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf = conf;

    u_char                             *p;
    ssize_t                             size;
    ngx_str_t                          *value, name, s;
    ngx_http_ratelimit_policy_shctx_t  *ctx;

    if (rpmcf->shm_zone) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (ngx_strncmp(value[1].data, "zone=", 5) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    name.data = value[1].data + 5;

    p = (u_char *) ngx_strchr(name.data, ':');

    if (p == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    name.len = p - name.data;

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone name \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    s.data = p + 1;
    s.len = value[1].data + value[1].len - s.data;

    size = ngx_parse_size(&s);

    if (size == NGX_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid zone size \"%V\"", &value[1]);
        return NGX_CONF_ERROR;
    }

    if (size < (ssize_t) (16 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "zone \"%V\" is too small, it must be at least "
                           "%uz bytes", &value[1], 16 * ngx_pagesize);
        return NGX_CONF_ERROR;
    }

    ctx = ngx_pcalloc(cf->pool, sizeof(ngx_http_ratelimit_policy_shctx_t));
    if (ctx == NULL) {
        return NGX_CONF_ERROR;
    }

    ctx->name = name;

    rpmcf->shm_zone = ngx_shared_memory_add(cf, &name, size,
                                            &ngx_http_ratelimit_policy_module);
    if (rpmcf->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    if (rpmcf->shm_zone->data) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "ratelimit_policy_zone \"%V\" is already defined",
                           &name);
        return NGX_CONF_ERROR;
    }

    rpmcf->shm_zone->init = ngx_http_ratelimit_policy_shm_init_zone;
    rpmcf->shm_zone->data = ctx;

    return NGX_CONF_OK;
}


static char *
ngx_http_ratelimit_policy_cache_ttl(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf = conf;

    ngx_str_t   *value, s;
    ngx_msec_t   ms;

    if (rpmcf->cache_ttl != NGX_CONF_UNSET_MSEC) {
        return "is duplicate";
    }

    value = cf->args->elts;

    /* the zone keeps times in 32 bits of milliseconds: under 24 days */

    ms = ngx_parse_time(&value[1], 0);
    if (ms == (ngx_msec_t) NGX_ERROR || ms == 0
        || ms > NGX_HTTP_RATELIMIT_POLICY_TTL_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid cache time \"%V\" (1ms to 24d)",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    rpmcf->cache_ttl = ms;

    if (cf->args->nelts == 2) {
        return NGX_CONF_OK;
    }

    if (ngx_strncmp(value[2].data, "negative=", 9) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\"", &value[2]);
        return NGX_CONF_ERROR;
    }

    s.data = value[2].data + 9;
    s.len = value[2].len - 9;

    ms = ngx_parse_time(&s, 0);
    if (ms == (ngx_msec_t) NGX_ERROR || ms == 0
        || ms > NGX_HTTP_RATELIMIT_POLICY_TTL_MAX)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid negative cache time \"%V\" (1ms to 24d)",
                           &value[2]);
        return NGX_CONF_ERROR;
    }

    rpmcf->negative_ttl = ms;

    return NGX_CONF_OK;
}


static char *
ngx_http_ratelimit_policy_default(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf = conf;

    u_char      c;
    ngx_str_t  *value;
    ngx_uint_t  i;

    if (rpmcf->default_slug.data) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (value[1].len == 0
        || value[1].len > NGX_HTTP_RATELIMIT_POLICY_SLUG_MAX)
    {
        goto invalid;
    }

    for (i = 0; i < value[1].len; i++) {
        c = value[1].data[i];

        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')
              || (c >= 'A' && c <= 'Z') || c == '_' || c == '-' || c == '.'))
        {
            goto invalid;
        }
    }

    rpmcf->default_slug = value[1];

    return NGX_CONF_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid policy slug \"%V\", it must be 1 to 64 "
                       "letters, digits, \"_\", \"-\" or \".\"", &value[1]);

    return NGX_CONF_ERROR;
}


static char *
ngx_http_ratelimit_policy_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_ratelimit_policy_loc_conf_t  *rpcf = conf;

    ngx_http_core_loc_conf_t               *clcf;

    if (rpcf->api != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    rpcf->api = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_ratelimit_policy_api_handler;

    ngx_http_ratelimit_policy_needs_db(cf,
        ngx_http_conf_get_module_main_conf(cf,
                                           ngx_http_ratelimit_policy_module));

    return NGX_CONF_OK;
}


static char *
ngx_http_ratelimit_policy_metrics(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (clcf->handler == ngx_http_ratelimit_policy_metrics_handler) {
        return "is duplicate";
    }

    clcf->handler = ngx_http_ratelimit_policy_metrics_handler;

    ngx_http_ratelimit_policy_needs_db(cf,
        ngx_http_conf_get_module_main_conf(cf,
                                           ngx_http_ratelimit_policy_module));

    return NGX_CONF_OK;
}


static char *
ngx_http_ratelimit_policy_enforce(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    char             *rv;
    ngx_str_t        *value;
    ngx_conf_enum_t  *e;

    value = cf->args->elts;

    for (e = cmd->post; e->name.len; e++) {
        if (e->name.len == value[1].len
            && ngx_strcmp(e->name.data, value[1].data) == 0)
        {
            break;
        }
    }

    if (e->name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid value \"%V\" in \"%V\" directive, "
                           "it must be \"send_message\", \"group\" or "
                           "\"check\"", &value[1], &cmd->name);
        return NGX_CONF_ERROR;
    }

    /* "is duplicate" */

    rv = ngx_conf_set_enum_slot(cf, cmd, conf);
    if (rv != NGX_CONF_OK) {
        return rv;
    }

    ngx_http_ratelimit_policy_needs_db(cf,
        ngx_http_conf_get_module_main_conf(cf,
                                           ngx_http_ratelimit_policy_module));

    return NGX_CONF_OK;
}


static void
ngx_http_ratelimit_policy_needs_db(ngx_conf_t *cf,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf)
{
    ngx_str_t  *value;

    if (rpmcf->needs_db.len) {
        return;
    }

    value = cf->args->elts;

    rpmcf->needs_db = value[0];
    rpmcf->needs_file = cf->conf_file->file.name.data;
    rpmcf->needs_line = cf->conf_file->line;
}


static ngx_int_t
ngx_http_ratelimit_policy_init_process(ngx_cycle_t *cycle)
{
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        /* not in the cache manager and loader */
        return NGX_OK;
    }

    rpmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                             ngx_http_ratelimit_policy_module);

    if (rpmcf == NULL || rpmcf->conninfo.len == 0 || rpmcf->shm_zone == NULL)
    {
        return NGX_OK;
    }

    if (ngx_http_ratelimit_policy_metrics_init_process(cycle, rpmcf)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_ratelimit_policy_pg_init_process(cycle, rpmcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_ratelimit_policy_cache_init_process(cycle, rpmcf)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    if (ngx_http_ratelimit_policy_usage_init_process(cycle, rpmcf)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    /* one listener per node: worker 0 (or the single process) */

    if (ngx_worker == 0) {
        return ngx_http_ratelimit_policy_pg_listen(rpmcf->pg,
                                          ngx_http_ratelimit_policy_notified,
                                          rpmcf->shm_zone);
    }

    return NGX_OK;
}


static void
ngx_http_ratelimit_policy_notified(void *data, u_char *payload, size_t len,
    int pid)
{
    ngx_pid_t                           prev;
    ngx_shm_zone_t                     *zone;
    ngx_http_ratelimit_policy_shctx_t  *ctx;

    zone = data;

    if (payload != NULL) {
        /* pid: an echo of this node's own PATCH is told by its backend */
        ngx_http_ratelimit_policy_invalidate(zone, payload, len, pid);
        return;
    }

    /*
     * The listener started listening.  Notifications were missed if it
     * listened before, or if the previous listener of this zone died (a
     * crashed worker 0); not when it is the old worker 0 of a reload,
     * which still listens, or when the zone is new.
     */

    ctx = zone->data;

    ngx_shmtx_lock(&ctx->shpool->mutex);
    prev = ctx->sh->listener;
    ctx->sh->listener = ngx_pid;
    ngx_shmtx_unlock(&ctx->shpool->mutex);

    if (len == 0
        && (prev == 0 || prev == ngx_pid
            || kill(prev, 0) == 0 || ngx_errno != NGX_ESRCH))
    {
        return;
    }

    ngx_log_error(NGX_LOG_NOTICE, ngx_cycle->log, 0,
                  "ratelimit_policy: notifications may have been missed, "
                  "every cached entry is reloaded on its next use");

    ngx_http_ratelimit_policy_invalidate(zone, (u_char *) "*", 1, 0);
}


static void
ngx_http_ratelimit_policy_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;

    rpmcf = ngx_http_cycle_get_module_main_conf(cycle,
                                             ngx_http_ratelimit_policy_module);

    if (rpmcf != NULL) {
        ngx_http_ratelimit_policy_pg_exit_process(cycle, rpmcf);
        ngx_http_ratelimit_policy_cache_exit_process(cycle);
    }

    ngx_http_ratelimit_policy_usage_exit_process(cycle);
    ngx_http_ratelimit_policy_metrics_exit_process(cycle);
    ngx_http_ratelimit_policy_enforce_exit_process(cycle);
}
