
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 *
 * The module's own directive handlers, called as nginx's configuration
 * parser calls them (through ngx_http_ratelimit_policy_module.commands,
 * arguments NUL-terminated, the argument count checked first), then
 * init_main_conf and merge_loc_conf: ratelimit_policy_db (the connection
 * string goes through libpq's PQconninfoParse and the host resolution),
 * ratelimit_policy_zone, ratelimit_policy_cache_ttl,
 * ratelimit_policy_default, ratelimit_policy_enforce and
 * ratelimit_policy_engine_sync.
 *
 * Input: directives separated by "\n"; the first byte of each picks the
 * directive, the rest are its arguments separated by 0x1f (an argument may
 * hold any other byte, NUL included, like a quoted token).  No name is
 * resolved (fuzz_common.c: numeric addresses only).
 *
 * Properties: every handler returns NGX_CONF_OK, NGX_CONF_ERROR or a
 * message; what was accepted is in range (pool 1..256, queue 0..65536,
 * timeouts and TTLs above 0, a zone of at least 16 pages, a default slug
 * of 1..64 [A-Za-z0-9_.-], an engine_sync URI starting with "/"); the
 * libpq parameters end with NULL, and whenever a host name was given
 * libpq gets a hostaddr (the module's holds numeric addresses only), so
 * that a worker never resolves a name.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <arpa/inet.h>
#include <libpq-fe.h>
#include "fuzz_common.h"
#include "ngx_http_ratelimit_policy_common.h"


#define FUZZ_ARG_SEP  0x1f


static const char  *fuzz_directives[] = {
    "ratelimit_policy_db",
    "ratelimit_policy_zone",
    "ratelimit_policy_cache_ttl",
    "ratelimit_policy_default",
    "ratelimit_policy_enforce",
    "ratelimit_policy_engine_sync",
};


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static ngx_command_t *fuzz_command(const char *name);
static ngx_uint_t fuzz_nargs_ok(ngx_command_t *cmd, ngx_uint_t nargs);
static void fuzz_check_db(ngx_http_ratelimit_policy_main_conf_t *rpmcf);
static void fuzz_check_hostaddr(const char *hostaddr);
static ngx_uint_t fuzz_has_keyword(ngx_str_t *conninfo, const char *keyword);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char                                   *rv;
    u_char                                 *c;
    size_t                                  len;
    ngx_str_t                              *arg;
    ngx_uint_t                              i, ndir, saw_db;
    ngx_conf_t                              cf;
    ngx_pool_t                             *pool;
    const uint8_t                          *line, *end, *p, *q;
    ngx_command_t                          *cmd;
    ngx_conf_file_t                         conf_file;
    ngx_http_module_t                      *mctx;
    ngx_http_conf_ctx_t                     http_ctx;
    ngx_http_ratelimit_policy_loc_conf_t   *rpcf, *prev;
    ngx_http_ratelimit_policy_main_conf_t  *rpmcf;
    void                                   *main_conf[1], *loc_conf[1];

    if (size > 4096) {
        return 0;
    }

    ngx_fuzz_init();
    pool = ngx_fuzz_pool();

    ngx_http_ratelimit_policy_module.ctx_index = 0;
    mctx = ngx_http_ratelimit_policy_module.ctx;

    ngx_memzero(&conf_file, sizeof(ngx_conf_file_t));
    ngx_str_set(&conf_file.file.name, "fuzz.conf");
    conf_file.line = 1;

    ngx_memzero(&cf, sizeof(ngx_conf_t));
    cf.pool = pool;
    cf.temp_pool = pool;
    cf.log = ngx_fuzz_log();
    cf.cycle = (ngx_cycle_t *) ngx_cycle;
    cf.conf_file = &conf_file;
    cf.ctx = &http_ctx;

    cf.args = ngx_array_create(pool, 8, sizeof(ngx_str_t));
    if (cf.args == NULL) {
        abort();
    }

    rpmcf = mctx->create_main_conf(&cf);
    prev = mctx->create_loc_conf(&cf);
    rpcf = mctx->create_loc_conf(&cf);

    if (rpmcf == NULL || prev == NULL || rpcf == NULL) {
        abort();
    }

    main_conf[0] = rpmcf;
    loc_conf[0] = rpcf;
    http_ctx.main_conf = (void **) main_conf;
    http_ctx.srv_conf = NULL;
    http_ctx.loc_conf = (void **) loc_conf;

    saw_db = 0;
    ndir = 0;
    end = data + size;

    for (line = data; line < end && ndir < 16; line = q + 1, ndir++) {
        q = memchr(line, '\n', end - line);
        if (q == NULL) {
            q = end;
        }

        if (q == line) {
            continue;
        }

        cmd = fuzz_command(fuzz_directives[line[0]
                                           % (sizeof(fuzz_directives)
                                              / sizeof(char *))]);

        cf.args->nelts = 0;

        arg = ngx_array_push(cf.args);
        if (arg == NULL) {
            abort();
        }

        arg->data = cmd->name.data;
        arg->len = cmd->name.len;

        for (p = line + 1; p <= q; p = c ? (const uint8_t *) c + 1 : q + 1) {
            c = (u_char *) memchr(p, FUZZ_ARG_SEP, q - p);
            len = (c ? (const uint8_t *) c : q) - p;

            arg = ngx_array_push(cf.args);
            if (arg == NULL) {
                abort();
            }

            arg->data = ngx_fuzz_strdup(pool, p, len);
            arg->len = len;

            if (c == NULL) {
                break;
            }
        }

        if (line + 1 == q) {
            /* a directive without arguments */
            cf.args->nelts = 1;
        }

        if (!fuzz_nargs_ok(cmd, cf.args->nelts - 1)) {
            continue;
        }

        conf_file.line++;

        rv = cmd->set(&cf, cmd, cmd->conf == NGX_HTTP_MAIN_CONF_OFFSET
                                ? (void *) rpmcf : (void *) rpcf);

        ngx_fuzz_assert(rv == NGX_CONF_OK || rv == NGX_CONF_ERROR
                        || (rv != NULL && rv[0] != '\0'));

        if (rv == NGX_CONF_OK && cmd->set == fuzz_command(
                                       "ratelimit_policy_db")->set)
        {
            saw_db = 1;
        }
    }

    /* what nginx does after the http block */

    rv = mctx->init_main_conf(&cf, rpmcf);
    ngx_fuzz_assert(rv == NGX_CONF_OK);

    ngx_fuzz_assert(rpmcf->pool_size >= 1 && rpmcf->pool_size <= 256);
    ngx_fuzz_assert(rpmcf->queue_size <= 65536);
    ngx_fuzz_assert(rpmcf->connect_timeout > 0);
    ngx_fuzz_assert(rpmcf->query_timeout > 0);
    ngx_fuzz_assert(rpmcf->cache_ttl > 0);
    ngx_fuzz_assert(rpmcf->negative_ttl > 0);

    ngx_fuzz_assert(rpmcf->default_slug.len >= 1
                    && rpmcf->default_slug.len
                       <= NGX_HTTP_RATELIMIT_POLICY_SLUG_MAX);

    for (i = 0; i < rpmcf->default_slug.len; i++) {
        c = &rpmcf->default_slug.data[i];
        ngx_fuzz_assert(isalnum(*c) || *c == '_' || *c == '-' || *c == '.');
    }

    if (rpmcf->shm_zone) {
        ngx_fuzz_assert(rpmcf->shm_zone->shm.size >= 16 * ngx_pagesize);
        ngx_fuzz_assert(rpmcf->shm_zone->shm.name.len > 0);
    }

    if (saw_db) {
        fuzz_check_db(rpmcf);
    }

    rv = mctx->merge_loc_conf(&cf, prev, rpcf);

    if (rv == NGX_CONF_OK) {
        ngx_fuzz_assert(rpcf->engine_sync.len == 0
                        || rpcf->engine_sync.data[0] == '/');
        ngx_fuzz_assert(rpcf->enforce <= 3);
    }

    ngx_destroy_pool(pool);

    return 0;
}


static ngx_command_t *
fuzz_command(const char *name)
{
    ngx_command_t  *cmd;

    for (cmd = ngx_http_ratelimit_policy_module.commands;
         cmd->name.len;
         cmd++)
    {
        if (ngx_strcmp(cmd->name.data, name) == 0) {
            return cmd;
        }
    }

    abort();
}


/* the argument count check of ngx_conf_handler() */

static ngx_uint_t
fuzz_nargs_ok(ngx_command_t *cmd, ngx_uint_t nargs)
{
    static ngx_uint_t  argument_number[] = {
        NGX_CONF_NOARGS, NGX_CONF_TAKE1, NGX_CONF_TAKE2, NGX_CONF_TAKE3,
        NGX_CONF_TAKE4, NGX_CONF_TAKE5, NGX_CONF_TAKE6, NGX_CONF_TAKE7
    };

    if (cmd->type & NGX_CONF_FLAG) {
        return nargs == 1;
    }

    if (cmd->type & NGX_CONF_1MORE) {
        return nargs >= 1;
    }

    if (cmd->type & NGX_CONF_2MORE) {
        return nargs >= 2;
    }

    if (nargs + 1 > NGX_CONF_MAX_ARGS) {
        return 0;
    }

    return (cmd->type & argument_number[nargs]) != 0;
}


static void
fuzz_check_db(ngx_http_ratelimit_policy_main_conf_t *rpmcf)
{
    ngx_uint_t    i, named;
    const char  **kw, **val, *host, *hostaddr, *p;

    ngx_fuzz_assert(rpmcf->pg_keywords != NULL && rpmcf->pg_values != NULL);
    ngx_fuzz_assert(rpmcf->pg_keywords->nelts == rpmcf->pg_values->nelts);
    ngx_fuzz_assert(rpmcf->pg_keywords->nelts >= 1);

    kw = rpmcf->pg_keywords->elts;
    val = rpmcf->pg_values->elts;

    ngx_fuzz_assert(kw[rpmcf->pg_keywords->nelts - 1] == NULL);
    ngx_fuzz_assert(val[rpmcf->pg_values->nelts - 1] == NULL);

    host = NULL;
    hostaddr = NULL;

    for (i = 0; kw[i]; i++) {
        ngx_fuzz_assert(val[i] != NULL);

        if (ngx_strcmp(kw[i], "host") == 0) {
            host = val[i];

        } else if (ngx_strcmp(kw[i], "hostaddr") == 0) {
            hostaddr = val[i];
        }
    }

    /* a host name (not a socket directory) needs a numeric hostaddr */

    named = 0;

    for (p = host; p && *p; ) {
        if (*p != '/' && *p != '@' && *p != ',') {
            named = 1;
        }

        p = strchr(p, ',');
        if (p == NULL) {
            break;
        }

        p++;
    }

    if (named) {
        ngx_fuzz_assert(hostaddr != NULL);
    }

    /* one the module made (not one of the connection string) */

    if (hostaddr && !fuzz_has_keyword(&rpmcf->conninfo, "hostaddr")) {
        fuzz_check_hostaddr(hostaddr);
    }
}


static ngx_uint_t
fuzz_has_keyword(ngx_str_t *conninfo, const char *keyword)
{
    char              *err;
    ngx_uint_t         found;
    PQconninfoOption  *opts, *o;

    err = NULL;
    opts = PQconninfoParse((char *) conninfo->data, &err);

    if (err) {
        PQfreemem(err);
    }

    ngx_fuzz_assert(opts != NULL);

    found = 0;

    for (o = opts; o->keyword; o++) {
        if (o->val && o->val[0] && ngx_strcmp(o->keyword, keyword) == 0) {
            found = 1;
        }
    }

    PQconninfoFree(opts);

    return found;
}


static void
fuzz_check_hostaddr(const char *hostaddr)
{
    char              addr[NGX_SOCKADDR_STRLEN + 1];
    size_t            len;
    const char       *p, *e;
    struct in6_addr   a6;

    for (p = hostaddr; ; p = e + 1) {
        e = strchr(p, ',');
        len = e ? (size_t) (e - p) : strlen(p);

        if (len) {
            ngx_fuzz_assert(len <= NGX_SOCKADDR_STRLEN);
            ngx_memcpy(addr, p, len);
            addr[len] = '\0';
            ngx_fuzz_assert(inet_pton(AF_INET, addr, &a6) == 1
                            || inet_pton(AF_INET6, addr, &a6) == 1);
        }

        if (e == NULL) {
            break;
        }
    }
}
