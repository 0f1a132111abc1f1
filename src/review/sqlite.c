/*
 * sqlite.c - the embedded review queue: one table in one SQLite file (WAL), one connection
 * behind a mutex.
 *
 * The file may be shared with other modules (the cache's ap_cache table, say): the table has
 * its own name, is created with IF NOT EXISTS, and the file's user_version, which the cache
 * uses for its schema version, is left alone.
 *
 * The request column comes last in the row although it is read with the others: SQLite stores
 * a row's columns in order and spills a long row into overflow pages, so a listing that never
 * touches the (megabytes of) request stops reading the row before the spill. Every value
 * reaches SQL as a bound parameter.
 *
 * Durability: synchronous = FULL. An id handed to a client must survive a power cut: the queue
 * is work to be done, unlike the cache, and review items are few.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "core/core.h"
#include "review/review_int.h"

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS review_items ("
    " id TEXT PRIMARY KEY,"       /* "rv_" + 24 hex */
    " status INTEGER NOT NULL,"   /* ap_review_status */
    " created INTEGER NOT NULL,"  /* ms since the epoch */
    " resolved INTEGER NOT NULL," /* ms since the epoch, 0 while pending */
    " task TEXT, model TEXT, client TEXT, reason TEXT, candidate TEXT, answer TEXT,"
    " reviewer TEXT,"
    " request TEXT NOT NULL" /* last: see the top of the file */
    ");"
    "CREATE INDEX IF NOT EXISTS review_items_status ON review_items(status, created);";

/* The columns every read returns, in this order; the request follows when asked for. */
#define COLS                                                                                       \
    "id, status, created, resolved, task, model, client, reason, candidate, answer, reviewer"
enum {
    C_ID,
    C_STATUS,
    C_CREATED,
    C_RESOLVED,
    C_TASK,
    C_MODEL,
    C_CLIENT,
    C_REASON,
    C_CANDIDATE,
    C_ANSWER,
    C_REVIEWER,
    C_REQUEST
};

enum { S_INS, S_GET, S_GET_REQ, S_LIST, S_COUNT, S_RESOLVE, S_STATUS, S_PURGE, N_STMT };

static const char *const stmt_sql[N_STMT] = {
    [S_INS] = "INSERT INTO review_items (id, status, created, resolved, task, model, client,"
              " reason, candidate, request) VALUES (?1, 0, ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8)",
    [S_GET] = "SELECT " COLS " FROM review_items WHERE id = ?1",
    [S_GET_REQ] = "SELECT " COLS ", request FROM review_items WHERE id = ?1",
    /* rowid: items of the same millisecond in the order they were added */
    [S_LIST] = "SELECT " COLS " FROM review_items WHERE status = ?1 ORDER BY created, rowid"
               " LIMIT ?2 OFFSET ?3",
    [S_COUNT] = "SELECT count(*) FROM review_items WHERE status = ?1",
    /* "still pending" is part of the update: two reviewers racing, one changes the row */
    [S_RESOLVE] = "UPDATE review_items SET status = ?2, resolved = ?3, answer = ?4, reviewer = ?5"
                  " WHERE id = ?1 AND status = 0",
    [S_STATUS] = "SELECT status FROM review_items WHERE id = ?1",
    [S_PURGE] = "DELETE FROM review_items WHERE status IN (1, 2) AND resolved < ?1",
};

struct sqlite_store {
    struct ap__review_backend super;
    pthread_mutex_t mu;
    sqlite3 *db;
    sqlite3_stmt *st[N_STMT];
};

static ap_status db_fail(struct sqlite_store *s, ap_error *err, const char *what)
{
    int rc = sqlite3_errcode(s->db);
    return ap_error_set(err, rc == SQLITE_NOMEM ? AP_ENOMEM : AP_EIO, "review: sqlite %s: %s", what,
                        sqlite3_errmsg(s->db));
}

/* Unbind and reset a statement after use, so no borrowed pointer outlives the call. */
static void done(sqlite3_stmt *st)
{
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
}

/* A text parameter: NULL stays NULL. SQLITE_STATIC: the statement is reset before we return. */
static void bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v == NULL)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
}

/* Copy a text column (NULL stays NULL). */
static ap_status column_copy(sqlite3_stmt *st, int col, char **out, ap_error *err)
{
    if (sqlite3_column_type(st, col) == SQLITE_NULL)
        return AP_OK;
    const char *p = (const char *)sqlite3_column_text(st, col);
    size_t len = (size_t)sqlite3_column_bytes(st, col);
    if (p == NULL)
        return ap_error_set(err, AP_ENOMEM, "review: sqlite: out of memory reading a column");
    return ap__review_strndup(p, len, out, err);
}

/* Fill it from st's current row (COLS, then the request when with_request). */
static ap_status row_read(sqlite3_stmt *st, bool with_request, ap_review_item *it, ap_error *err)
{
    const char *id = (const char *)sqlite3_column_text(st, C_ID);
    int status = sqlite3_column_int(st, C_STATUS);
    ap_status rc = AP_OK;

    /* Another program may write this file: trust nothing that would break an invariant. */
    if (!ap__review_id_valid(id) || status < AP_REVIEW_PENDING || status > AP_REVIEW_REJECTED)
        return ap_error_set(err, AP_EIO, "review: sqlite row \"%.40s\" is malformed",
                            id ? id : "(null)");
    memcpy(it->id, id, AP__REVIEW_ID_LEN + 1);
    it->status = (ap_review_status)status;
    it->created_unix_ms = sqlite3_column_int64(st, C_CREATED);
    it->resolved_unix_ms = sqlite3_column_int64(st, C_RESOLVED);
    char **cols[] = {
        [C_TASK] = &it->task,         [C_MODEL] = &it->model,         [C_CLIENT] = &it->client,
        [C_REASON] = &it->reason,     [C_CANDIDATE] = &it->candidate, [C_ANSWER] = &it->answer,
        [C_REVIEWER] = &it->reviewer, [C_REQUEST] = &it->request,
    };
    int last = with_request ? C_REQUEST : C_REVIEWER;
    for (int c = C_TASK; c <= last && rc == AP_OK; c++)
        rc = column_copy(st, c, cols[c], err);
    return rc;
}

/* ---- the verbs */

static ap_status sq_add(struct ap__review_backend *base, const char *id, int64_t created_ms,
                        const ap_review_item *item, ap_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3_stmt *st = s->st[S_INS];
    ap_status rc = AP_OK;

    pthread_mutex_lock(&s->mu);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, created_ms);
    bind_text(st, 3, item->task);
    bind_text(st, 4, item->model);
    bind_text(st, 5, item->client);
    bind_text(st, 6, item->reason);
    bind_text(st, 7, item->candidate);
    bind_text(st, 8, item->request);
    int src = sqlite3_step(st);
    if (src == SQLITE_CONSTRAINT)
        rc = ap_error_set(err, AP_EINTERNAL, "review: id \"%s\" already exists", id);
    else if (src != SQLITE_DONE)
        rc = db_fail(s, err, "insert");
    done(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static ap_status sq_get(struct ap__review_backend *base, const char *id, bool with_request,
                        ap_review_item *out, ap_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3_stmt *st = s->st[with_request ? S_GET_REQ : S_GET];
    ap_status rc;

    pthread_mutex_lock(&s->mu);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        rc = row_read(st, with_request, out, err);
    else if (src == SQLITE_DONE)
        rc = ap_error_set(err, AP_ENOTFOUND, "review: no item \"%s\"", id);
    else
        rc = db_fail(s, err, "get");
    done(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static ap_status sq_list(struct ap__review_backend *base, ap_review_status status, size_t offset,
                         size_t limit, ap_review_item **items, size_t *n, ap_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3_stmt *st = s->st[S_LIST];
    ap_review_item *v = NULL;
    size_t got = 0, cap = 0;
    ap_status rc = AP_OK;
    int src = SQLITE_DONE;

    pthread_mutex_lock(&s->mu);
    sqlite3_bind_int(st, 1, (int)status);
    sqlite3_bind_int64(st, 2, (int64_t)AP_MIN(limit, (size_t)INT64_MAX));
    sqlite3_bind_int64(st, 3, (int64_t)AP_MIN(offset, (size_t)INT64_MAX));
    while (rc == AP_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        if (got == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            ap_review_item *nv = realloc(v, ncap * sizeof(*nv));
            if (nv == NULL) {
                rc = ap_error_set(err, AP_ENOMEM, "review: out of memory listing");
                break;
            }
            v = nv;
            cap = ncap;
        }
        memset(&v[got], 0, sizeof(v[got]));
        rc = row_read(st, false, &v[got], err);
        got++; /* counted even when it failed: released below */
    }
    if (rc == AP_OK && src != SQLITE_DONE)
        rc = db_fail(s, err, "list");
    done(st);
    pthread_mutex_unlock(&s->mu);
    if (rc != AP_OK) {
        for (size_t i = 0; i < got; i++)
            ap_review_item_release(&v[i]);
        free(v);
        return rc;
    }
    *items = v;
    *n = got;
    return AP_OK;
}

static ap_status sq_count(struct ap__review_backend *base, ap_review_status status, size_t *n,
                          ap_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3_stmt *st = s->st[S_COUNT];
    ap_status rc = AP_OK;

    pthread_mutex_lock(&s->mu);
    sqlite3_bind_int(st, 1, (int)status);
    if (sqlite3_step(st) == SQLITE_ROW)
        *n = (size_t)sqlite3_column_int64(st, 0);
    else
        rc = db_fail(s, err, "count");
    done(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static ap_status sq_resolve(struct ap__review_backend *base, const char *id,
                            ap_review_status status, const char *answer, const char *reviewer,
                            int64_t resolved_ms, ap_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3_stmt *st = s->st[S_RESOLVE];
    ap_status rc = AP_OK;

    pthread_mutex_lock(&s->mu);
    sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, (int)status);
    sqlite3_bind_int64(st, 3, resolved_ms);
    bind_text(st, 4, answer);
    bind_text(st, 5, reviewer);
    int src = sqlite3_step(st);
    int changed = src == SQLITE_DONE ? sqlite3_changes(s->db) : 0;
    done(st);
    if (src != SQLITE_DONE) {
        rc = db_fail(s, err, "resolve");
    } else if (changed == 0) {
        /* Not updated: gone, or no longer pending. Which one only shapes the answer: the
         * update itself decided, so a row changing in between does no harm. */
        st = s->st[S_STATUS];
        sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        src = sqlite3_step(st);
        if (src == SQLITE_ROW)
            rc = ap_error_set(err, AP_EINVAL, "review: item \"%s\" is already %s", id,
                              ap_review_status_name((ap_review_status)sqlite3_column_int(st, 0)));
        else if (src == SQLITE_DONE)
            rc = ap_error_set(err, AP_ENOTFOUND, "review: no item \"%s\"", id);
        else
            rc = db_fail(s, err, "resolve");
        done(st);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static ap_status sq_purge(struct ap__review_backend *base, int64_t older_than_ms, size_t *removed,
                          ap_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3_stmt *st = s->st[S_PURGE];
    ap_status rc = AP_OK;

    pthread_mutex_lock(&s->mu);
    sqlite3_bind_int64(st, 1, older_than_ms);
    if (sqlite3_step(st) == SQLITE_DONE)
        *removed = (size_t)sqlite3_changes(s->db);
    else
        rc = db_fail(s, err, "purge");
    done(st);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- open, free */

static void sq_free(struct ap__review_backend *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    for (int i = 0; i < N_STMT; i++)
        sqlite3_finalize(s->st[i]);
    sqlite3_close(s->db);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static const struct ap__review_ops sqlite_ops = {
    .name = "sqlite",
    .add = sq_add,
    .get = sq_get,
    .list = sq_list,
    .count = sq_count,
    .resolve = sq_resolve,
    .purge = sq_purge,
    .free = sq_free,
};

ap_status ap__review_sqlite_open(const char *target, const char *url,
                                 struct ap__review_backend **out, ap_error *err)
{
    struct sqlite_store *s = NULL;
    ap_status rc = AP_OK;

    if (*target == '\0')
        return ap_error_set(err, AP_EINVAL, "review: sqlite url \"%s\" names no file", url);
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return ap_error_set(err, AP_ENOMEM, "review: out of memory");
    s->super.ops = &sqlite_ops;
    pthread_mutex_init(&s->mu, NULL);

    /* Our mutex serialises the connection: SQLite's own (FULLMUTEX) would be a second one. */
    if (sqlite3_open_v2(target, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        rc = ap_error_set(err, AP_EIO, "review: cannot open \"%s\": %s", target,
                          s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto out;
    }
    /* Other gateways (or the cache) may write the same file: wait for their locks a while. */
    sqlite3_busy_timeout(s->db, 2000);
    if (sqlite3_exec(s->db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;", NULL, NULL,
                     NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, schema_sql, NULL, NULL, NULL) != SQLITE_OK) {
        /* The first statement to touch the file is where a non-database fails. */
        rc = ap_error_set(err, AP_EIO, "review: cannot use \"%s\": %s", target,
                          sqlite3_errmsg(s->db));
        goto out;
    }
    for (int i = 0; i < N_STMT; i++) {
        if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                               NULL) != SQLITE_OK) {
            rc = db_fail(s, err, "prepare");
            goto out;
        }
    }
    *out = &s->super;
    s = NULL;
out:
    if (s != NULL)
        sq_free(&s->super);
    return rc;
}
