
/*
 * Copyright (C) ngx_http_ratelimit_policy_module authors
 */


#ifndef _NGX_HTTP_RATELIMIT_POLICY_PG_H_INCLUDED_
#define _NGX_HTTP_RATELIMIT_POLICY_PG_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <libpq-fe.h>
#include "ngx_http_ratelimit_policy_common.h"


/* outcome of a query */
#define NGX_HTTP_RATELIMIT_POLICY_PG_OK           0
#define NGX_HTTP_RATELIMIT_POLICY_PG_UNAVAILABLE  1
#define NGX_HTTP_RATELIMIT_POLICY_PG_TIMEOUT      2
#define NGX_HTTP_RATELIMIT_POLICY_PG_SQL_ERROR    3

/* the statements every pooled connection prepares */
#define NGX_HTTP_RATELIMIT_POLICY_STMT_LOOKUP     0
#define NGX_HTTP_RATELIMIT_POLICY_STMT_CATALOG    1
#define NGX_HTTP_RATELIMIT_POLICY_STMT_SET        2
#define NGX_HTTP_RATELIMIT_POLICY_STMT_USAGE      3
#define NGX_HTTP_RATELIMIT_POLICY_NSTMTS          4

#define NGX_HTTP_RATELIMIT_POLICY_PG_MAX_PARAMS   4


typedef struct ngx_http_ratelimit_policy_pg_query_s
    ngx_http_ratelimit_policy_pg_query_t;

typedef void (*ngx_http_ratelimit_policy_pg_handler_pt)(
    ngx_http_ratelimit_policy_pg_query_t *q);

typedef void (*ngx_http_ratelimit_policy_pg_notify_pt)(void *data,
    u_char *payload, size_t len, int pid);


struct ngx_http_ratelimit_policy_pg_query_s {
    ngx_uint_t                                stmt;
    int                                       nparams;
    const char                               *values[
                                       NGX_HTTP_RATELIMIT_POLICY_PG_MAX_PARAMS];
    int                                       lengths[
                                       NGX_HTTP_RATELIMIT_POLICY_PG_MAX_PARAMS];
    int                                       formats[
                                       NGX_HTTP_RATELIMIT_POLICY_PG_MAX_PARAMS];

    ngx_http_ratelimit_policy_pg_handler_pt   handler;
    void                                     *data;
    ngx_log_t                                *log;

    /*
     * optional: called when the query is about to be written to a
     * connection, with backend_pid set to that connection's backend
     * (the "be_pid" of the notifications its transactions send)
     */
    ngx_http_ratelimit_policy_pg_handler_pt   sending;
    int                                       backend_pid;

    /* set before the handler is called; result is freed after it returns */
    ngx_uint_t                                rc;
    PGresult                                 *result;

    /* private */
    ngx_queue_t                               queue;
    ngx_event_t                               timer;
    ngx_http_ratelimit_policy_pg_t           *pg;
    uint64_t                                  started;
    void                                     *conn;
    unsigned                                  queued:1;
};


ngx_int_t ngx_http_ratelimit_policy_pg_init_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf);
void ngx_http_ratelimit_policy_pg_exit_process(ngx_cycle_t *cycle,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf);

/*
 * NGX_OK: the handler will be called later, exactly once;
 * NGX_DECLINED: q->rc says why the query was not sent, no handler call.
 */
ngx_int_t ngx_http_ratelimit_policy_pg_send(
    ngx_http_ratelimit_policy_pg_t *pg,
    ngx_http_ratelimit_policy_pg_query_t *q);

/* a query could be answered now: a connection is open, or may be tried */
ngx_uint_t ngx_http_ratelimit_policy_pg_available(
    ngx_http_ratelimit_policy_pg_t *pg);

/* seconds a client should wait before retrying */
time_t ngx_http_ratelimit_policy_pg_retry_after(
    ngx_http_ratelimit_policy_pg_t *pg);

/*
 * LISTEN in this worker: notify(data, payload, len, pid) for each
 * notification, pid being the backend of the session that sent it, and
 * notify(data, NULL, again, 0) each time the listener starts listening,
 * again = 0 the first time in this process
 */
ngx_int_t ngx_http_ratelimit_policy_pg_listen(
    ngx_http_ratelimit_policy_pg_t *pg,
    ngx_http_ratelimit_policy_pg_notify_pt notify, void *data);
ngx_uint_t ngx_http_ratelimit_policy_pg_listening(
    ngx_http_ratelimit_policy_pg_t *pg);

/* the name of a prepared statement, NGX_HTTP_RATELIMIT_POLICY_STMT_* */
const char *ngx_http_ratelimit_policy_pg_statement(ngx_uint_t stmt);

char *ngx_http_ratelimit_policy_pg_conninfo(ngx_conf_t *cf,
    ngx_http_ratelimit_policy_main_conf_t *rpmcf, ngx_str_t *conninfo);


#endif /* _NGX_HTTP_RATELIMIT_POLICY_PG_H_INCLUDED_ */
