/*
 * sqlite.c - the embedded store: one SQLite file in WAL mode, one connection behind a mutex,
 * a reaper thread deleting expired rows, and the near-duplicate index in memory.
 *
 * Near index. Entries with images are kept in one multi-index hash (mih.c) per near-match group
 * (task + shape), over the first image's pHash, with the row id as item id; the index is
 * rebuilt from the table at open (about 1.5 s per million rows) and kept in step by put,
 * purge and the reaper. It is this process's view: rows another process adds are found by
 * exact lookups only, and rows it deletes are dropped from the index when a lookup finds them
 * gone. The alternative, an indexed (block, value) table probed with SQL, needs neither the
 * memory (~185 bytes per entry) nor the rebuild (~1.5 s per million rows), but measured
 * (bench/cache_bench.c, 1M entries in one group) 8x slower at threshold 6 (p50 0.33 ms vs
 * 0.04 ms) and 13x at 10 (2.5 ms vs 0.19 ms, over the 1 ms budget): we chose memory.
 * Content groups (task + shape + OCR fingerprint) need no pHash index: they are an indexed
 * column (ctag), and the few rows of one group are compared directly.
 *
 * Rows are never trusted blindly: every candidate is read back and re-checked (task, shape,
 * each image's distance, fingerprint, expiry) before it answers. Row ids are AUTOINCREMENT, so
 * an index item left behind by a row another process deleted can never name a newer row.
 *
 * Time: expiry is wall-clock milliseconds, since the file outlives the process.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "cache/cache_int.h"
#include "cache/mih.h"
#include "core/core.h"

#define STR_(x) #x
#define STR(x)  STR_(x)

#define SCHEMA_VERSION 1
#define REAP_BATCH     256
#define CTAG_ROWS      64   /* rows of one content group looked at */
#define MIH_VISITS     4096 /* near hits looked at before choosing candidates */

static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS ap_cache ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT," /* never reused: see the top of the file */
    " k BLOB NOT NULL UNIQUE,"               /* the exact key, 32 bytes */
    " task TEXT NOT NULL,"
    " shape BLOB NOT NULL," /* 32 bytes */
    " phash BLOB NOT NULL," /* 8 bytes per image, big-endian; empty: no near matching */
    " content BLOB,"        /* OCR fingerprint, 32 bytes, or NULL */
    " ctag INTEGER,"        /* content group tag, or NULL */
    " value BLOB NOT NULL,"
    " meta BLOB,"
    " size INTEGER NOT NULL,"    /* value + meta bytes */
    " created INTEGER NOT NULL," /* ms since the epoch */
    " expires INTEGER NOT NULL"
    ");"
    "CREATE INDEX IF NOT EXISTS ap_cache_expires ON ap_cache(expires);"
    "CREATE INDEX IF NOT EXISTS ap_cache_ctag ON ap_cache(ctag) WHERE ctag IS NOT NULL;"
    "CREATE INDEX IF NOT EXISTS ap_cache_task ON ap_cache(task);";

enum {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_GET,
    S_BY_ID,
    S_BY_CTAG,
    S_FIND,
    S_DEL,
    S_INS,
    S_EXPIRED,
    S_TASK_ROWS,
    S_DEL_TASK,
    S_DEL_ALL,
    N_STMT
};

/* The columns of the "row" statements (S_FIND, S_EXPIRED, S_TASK_ROWS), in this order. */
#define ROW_COLS "id, task, shape, phash, size"

static const char *const stmt_sql[N_STMT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_GET] = "SELECT task, value, meta, expires FROM ap_cache WHERE k = ?1",
    [S_BY_ID] = "SELECT task, shape, phash, content, expires, value, meta FROM ap_cache"
                " WHERE id = ?1",
    [S_BY_CTAG] = "SELECT task, shape, phash, content, expires, value, meta FROM ap_cache"
                  " WHERE ctag = ?1 AND expires > ?2 LIMIT " STR(CTAG_ROWS),
    [S_FIND] = "SELECT " ROW_COLS " FROM ap_cache WHERE k = ?1",
    [S_DEL] = "DELETE FROM ap_cache WHERE id = ?1",
    [S_INS] = "INSERT INTO ap_cache (k, task, shape, phash, content, ctag, value, meta, size,"
              " created, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    [S_EXPIRED] = "SELECT " ROW_COLS " FROM ap_cache WHERE expires <= ?1"
                  " LIMIT " STR(REAP_BATCH),
    [S_TASK_ROWS] = "SELECT " ROW_COLS " FROM ap_cache WHERE task = ?1",
    [S_DEL_TASK] = "DELETE FROM ap_cache WHERE task = ?1",
    [S_DEL_ALL] = "DELETE FROM ap_cache",
};

/* One near-match group: its tag and index. mih NULL marks a free table entry. */
struct group {
    uint64_t tag;
    struct ap__mih *mih;
};

/* What forgetting a row needs: a copy of the ROW_COLS of one row. */
struct row {
    int64_t id;
    char task[AP_CACHE_MAX_TASK + 1];
    uint8_t shape[32];
    bool has_phash;
    uint64_t phash0;
    int64_t size;
};

struct sqlite_store {
    struct ap__store super;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t reaper;
    bool reaper_on, stopping;
    sqlite3 *db;
    sqlite3_stmt *st[N_STMT];
    struct group *groups;
    uint32_t groups_cap, groups_used;
    long entries, bytes;
};

static ap_status db_fail(struct sqlite_store *s, ap_error *err, const char *what)
{
    int rc = sqlite3_errcode(s->db);
    return ap_error_set(err, rc == SQLITE_NOMEM ? AP_ENOMEM : AP_EIO, "cache: sqlite %s: %s", what,
                        sqlite3_errmsg(s->db));
}

/* Run a statement that returns no rows, and reset it. */
static int step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

static void rollback(struct sqlite_store *s)
{
    (void)step_done(s->st[S_ROLLBACK]);
}

/* ---- the group table (tag -> index), open addressing with backward-shift deletion */

static uint32_t group_home(uint64_t tag, uint32_t cap)
{
    return (uint32_t)(tag >> 32 ^ tag) & (cap - 1); /* tags are already well mixed */
}

static struct group *group_find(struct sqlite_store *s, uint64_t tag)
{
    if (s->groups_cap == 0)
        return NULL;
    for (uint32_t i = group_home(tag, s->groups_cap);; i = (i + 1) & (s->groups_cap - 1)) {
        if (s->groups[i].mih == NULL)
            return NULL;
        if (s->groups[i].tag == tag)
            return &s->groups[i];
    }
}

/* The index of tag, created when missing; NULL when out of memory. */
static struct ap__mih *group_get(struct sqlite_store *s, uint64_t tag)
{
    struct group *g = group_find(s, tag);
    if (g != NULL)
        return g->mih;
    if ((s->groups_used + 1) * 2 > s->groups_cap) {
        uint32_t ncap = s->groups_cap ? s->groups_cap * 2 : 64;
        struct group *ng = calloc(ncap, sizeof(*ng));
        if (ng == NULL)
            return NULL;
        for (uint32_t i = 0; i < s->groups_cap; i++) {
            if (s->groups[i].mih == NULL)
                continue;
            uint32_t j = group_home(s->groups[i].tag, ncap);
            while (ng[j].mih != NULL)
                j = (j + 1) & (ncap - 1);
            ng[j] = s->groups[i];
        }
        free(s->groups);
        s->groups = ng;
        s->groups_cap = ncap;
    }
    struct ap__mih *m = ap__mih_new();
    if (m == NULL)
        return NULL;
    uint32_t i = group_home(tag, s->groups_cap);
    while (s->groups[i].mih != NULL)
        i = (i + 1) & (s->groups_cap - 1);
    s->groups[i].tag = tag;
    s->groups[i].mih = m;
    s->groups_used++;
    return m;
}

static void group_delete(struct sqlite_store *s, struct group *g)
{
    uint32_t mask = s->groups_cap - 1, hole = (uint32_t)(g - s->groups);
    ap__mih_free(g->mih);
    for (uint32_t j = (hole + 1) & mask; s->groups[j].mih != NULL; j = (j + 1) & mask) {
        uint32_t home = group_home(s->groups[j].tag, s->groups_cap);
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            s->groups[hole] = s->groups[j];
            hole = j;
        }
    }
    s->groups[hole].mih = NULL;
    s->groups_used--;
}

static void groups_clear(struct sqlite_store *s)
{
    for (uint32_t i = 0; i < s->groups_cap; i++)
        ap__mih_free(s->groups[i].mih);
    free(s->groups);
    s->groups = NULL;
    s->groups_cap = s->groups_used = 0;
}

/* ---- keeping the counters and the index in step with the table */

/* Copy the ROW_COLS of st's current row. */
static void row_read(sqlite3_stmt *st, struct row *r)
{
    const void *shape = sqlite3_column_blob(st, 2);
    const unsigned char *task = sqlite3_column_text(st, 1);

    memset(r, 0, sizeof(*r));
    r->id = sqlite3_column_int64(st, 0);
    if (task != NULL)
        snprintf(r->task, sizeof(r->task), "%s", (const char *)task);
    if (shape != NULL && sqlite3_column_bytes(st, 2) == 32)
        memcpy(r->shape, shape, 32);
    const uint8_t *ph = sqlite3_column_blob(st, 3);
    if (ph != NULL && sqlite3_column_bytes(st, 3) >= 8) {
        r->has_phash = true;
        r->phash0 = ap__cache_get_be64(ph);
    }
    r->size = sqlite3_column_int64(st, 4);
}

/* A row joined the table: count it, index it. Out of memory costs near matches only. */
static void remember(struct sqlite_store *s, int64_t id, const char *task, const uint8_t *shape,
                     bool has_phash, uint64_t phash0, int64_t size)
{
    s->entries++;
    s->bytes += (long)size;
    if (!has_phash)
        return;
    uint64_t tag = ap__cache_shape_tag(task, shape);
    struct ap__mih *m = group_get(s, tag);
    if (m != NULL && ap__mih_add(m, phash0, (uint64_t)id) != AP_OK && ap__mih_count(m) == 0)
        group_delete(s, group_find(s, tag)); /* no empty groups */
}

/* Drop a row's index item (if any). Returns whether it was indexed. */
static bool unindex(struct sqlite_store *s, const char *task, const uint8_t *shape, uint64_t phash0,
                    int64_t id)
{
    struct group *g = group_find(s, ap__cache_shape_tag(task, shape));
    if (g == NULL || !ap__mih_remove(g->mih, phash0, (uint64_t)id))
        return false;
    if (ap__mih_count(g->mih) == 0)
        group_delete(s, g);
    return true;
}

/* A row left the table. */
static void forget(struct sqlite_store *s, const struct row *r)
{
    s->entries--;
    s->bytes -= (long)r->size;
    if (r->has_phash)
        (void)unindex(s, r->task, r->shape, r->phash0, r->id);
}

/* ---- get */

/* Copy value and meta (columns vcol, vcol + 1 of st) into hit, within the size limit (another
 * process may have written the row with a larger one). */
static ap_status take_value(const struct sqlite_store *s, sqlite3_stmt *st, int vcol,
                            ap_cache_hit *hit, ap_error *err)
{
    size_t len = (size_t)sqlite3_column_bytes(st, vcol);
    const void *v = sqlite3_column_blob(st, vcol);
    size_t max = s->super.opts.max_value_bytes;
    if (len + (size_t)sqlite3_column_bytes(st, vcol + 1) > max)
        return ap_error_set(err, AP_ETOOLARGE, "cache: stored value of %zu bytes is over %zu",
                            len + (size_t)sqlite3_column_bytes(st, vcol + 1), max);
    hit->value = malloc(len + 1);
    if (hit->value == NULL)
        return ap_error_set(err, AP_ENOMEM, "cache: out of memory copying a value");
    if (len)
        memcpy(hit->value, v, len);
    hit->value[len] = '\0';
    hit->len = len;
    if (sqlite3_column_type(st, vcol + 1) != SQLITE_NULL) {
        size_t mlen = (size_t)sqlite3_column_bytes(st, vcol + 1);
        const void *m = sqlite3_column_blob(st, vcol + 1);
        hit->meta = malloc(mlen + 1);
        if (hit->meta == NULL)
            return ap_error_set(err, AP_ENOMEM, "cache: out of memory copying a value");
        if (mlen)
            memcpy(hit->meta, m, mlen);
        hit->meta[mlen] = '\0';
        hit->meta_len = mlen;
    }
    return AP_OK;
}

/* The entry view of a S_BY_ID / S_BY_CTAG row (columns task, shape, phash, content). */
static void view_of(sqlite3_stmt *st, struct ap__cache_entry_view *e)
{
    e->task = (const char *)sqlite3_column_text(st, 0);
    e->task_len = (size_t)sqlite3_column_bytes(st, 0);
    e->shape = sqlite3_column_blob(st, 1);
    e->shape_len = (size_t)sqlite3_column_bytes(st, 1);
    e->phash_be = sqlite3_column_blob(st, 2);
    e->phash_len = (size_t)sqlite3_column_bytes(st, 2);
    e->content = sqlite3_column_blob(st, 3);
    e->content_len = (size_t)sqlite3_column_bytes(st, 3);
    if (e->task == NULL)
        e->task = "";
}

/* The closest near hits of an index query, by distance; the query stops after MIH_VISITS. */
struct cands {
    size_t n, visits;
    struct {
        uint64_t id, code;
        int d;
    } c[AP__CACHE_MAX_CANDIDATES];
};

static int collect(uint64_t id, uint64_t code, int d, void *ctx)
{
    struct cands *cs = ctx;
    size_t i = cs->n;

    if (i == AP__CACHE_MAX_CANDIDATES) {
        if (d >= cs->c[i - 1].d)
            return ++cs->visits >= MIH_VISITS;
        i--; /* the farthest falls out */
    } else {
        cs->n++;
    }
    /* Insertion into the sorted array. */
    while (i > 0 && cs->c[i - 1].d > d) {
        cs->c[i] = cs->c[i - 1];
        i--;
    }
    cs->c[i].id = id;
    cs->c[i].code = code;
    cs->c[i].d = d;
    return ++cs->visits >= MIH_VISITS;
}

/* Tolerant near lookup: index candidates of the group, closest first, re-checked on the row. */
static ap_status near_tolerant(struct sqlite_store *s, const ap_cache_key *key, const char *task,
                               int t, int64_t now, ap_cache_hit *hit, ap_error *err)
{
    struct group *g = group_find(s, ap__cache_shape_tag(task, key->shape));
    struct cands cs;
    sqlite3_stmt *st = s->st[S_BY_ID];
    ap_status rc = AP_OK;

    if (g == NULL)
        return AP_OK;
    cs.n = cs.visits = 0;
    ap__mih_query(g->mih, key->phash[0], t, collect, &cs);
    for (size_t i = 0; i < cs.n && hit->kind == AP_CACHE_MISS && rc == AP_OK; i++) {
        struct ap__cache_entry_view e;
        int d, src;

        sqlite3_bind_int64(st, 1, (int64_t)cs.c[i].id);
        src = sqlite3_step(st);
        if (src == SQLITE_DONE) {
            /* Deleted behind our back (another process): drop it from the index. */
            sqlite3_reset(st);
            (void)unindex(s, task, key->shape, cs.c[i].code, (int64_t)cs.c[i].id);
            /* The group may be gone now; the remaining candidates are checked on rows. */
            continue;
        }
        if (src != SQLITE_ROW) {
            rc = db_fail(s, err, "near lookup");
            sqlite3_reset(st);
            break;
        }
        view_of(st, &e);
        if (sqlite3_column_int64(st, 4) > now && ap__cache_near_ok(key, task, t, true, &e, &d)) {
            rc = take_value(s, st, 5, hit, err);
            hit->kind = AP_CACHE_HIT_NEAR;
            hit->distance = d;
        }
        sqlite3_reset(st);
    }
    return rc;
}

/* Non-tolerant near lookup: the rows of the content group, the closest that passes. */
static ap_status near_content(struct sqlite_store *s, const ap_cache_key *key, const char *task,
                              int t, int64_t now, ap_cache_hit *hit, ap_error *err)
{
    sqlite3_stmt *st = s->st[S_BY_CTAG];
    ap_status rc = AP_OK;
    int src, best = t + 1;

    sqlite3_bind_int64(st, 1, (int64_t)ap__cache_content_tag(task, key->shape, key->content));
    sqlite3_bind_int64(st, 2, now);
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        struct ap__cache_entry_view e;
        int d;

        view_of(st, &e);
        if (!ap__cache_near_ok(key, task, t, false, &e, &d) || d >= best)
            continue;
        ap_cache_hit_release(hit);
        if ((rc = take_value(s, st, 5, hit, err)) != AP_OK)
            break;
        hit->kind = AP_CACHE_HIT_NEAR;
        hit->distance = best = d;
    }
    if (rc == AP_OK && src != SQLITE_ROW && src != SQLITE_DONE)
        rc = db_fail(s, err, "near lookup");
    sqlite3_reset(st);
    return rc;
}

static ap_status sq_get(struct ap__store *base, const ap_cache_key *key, const char *task, int t,
                        bool tolerant, ap_cache_hit *hit, ap_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    sqlite3_stmt *st = s->st[S_GET];
    int64_t now = ap__cache_wall_ms();
    ap_status rc = AP_OK;
    int src;

    pthread_mutex_lock(&s->mu);
    sqlite3_bind_blob(st, 1, key->exact, 32, SQLITE_STATIC);
    src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        const char *etask = (const char *)sqlite3_column_text(st, 0);
        /* A key the caller built without its task cannot answer another task. */
        if (etask != NULL && strcmp(etask, task) == 0 && sqlite3_column_int64(st, 3) > now) {
            rc = take_value(s, st, 1, hit, err);
            hit->kind = AP_CACHE_HIT_EXACT;
        }
    } else if (src != SQLITE_DONE) {
        rc = db_fail(s, err, "lookup");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc == AP_OK && hit->kind == AP_CACHE_MISS && t >= 0)
        rc = tolerant ? near_tolerant(s, key, task, t, now, hit, err)
                      : near_content(s, key, task, t, now, hit, err);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- put, purge */

static ap_status sq_put(struct ap__store *base, const ap_cache_key *key, const char *task,
                        const char *value, size_t len, const char *meta, size_t meta_len,
                        long ttl_s, ap_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    uint8_t phash[AP_CACHE_MAX_IMAGES * 8];
    int64_t now = ap__cache_wall_ms(), id;
    struct row old;
    bool replaced = false;
    ap_status rc = AP_OK;
    sqlite3_stmt *st;
    int src;

    for (size_t i = 0; i < key->n_images; i++)
        ap__cache_put_be64(phash + 8 * i, key->phash[i]);

    pthread_mutex_lock(&s->mu);
    if (step_done(s->st[S_BEGIN]) != SQLITE_OK) {
        rc = db_fail(s, err, "begin");
        goto out;
    }
    st = s->st[S_FIND];
    sqlite3_bind_blob(st, 1, key->exact, 32, SQLITE_STATIC);
    src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        row_read(st, &old);
        replaced = true;
    }
    sqlite3_reset(st);
    if (src != SQLITE_ROW && src != SQLITE_DONE)
        goto fail;
    if (replaced) {
        sqlite3_bind_int64(s->st[S_DEL], 1, old.id);
        if (step_done(s->st[S_DEL]) != SQLITE_OK)
            goto fail;
    }
    st = s->st[S_INS];
    sqlite3_bind_blob(st, 1, key->exact, 32, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, task, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, key->shape, 32, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, phash, (int)(8 * key->n_images), SQLITE_STATIC);
    if (key->has_content) {
        sqlite3_bind_blob(st, 5, key->content, 32, SQLITE_STATIC);
        sqlite3_bind_int64(st, 6, (int64_t)ap__cache_content_tag(task, key->shape, key->content));
    } else {
        sqlite3_bind_null(st, 5);
        sqlite3_bind_null(st, 6);
    }
    sqlite3_bind_blob64(st, 7, value, len, SQLITE_STATIC);
    if (meta != NULL)
        sqlite3_bind_blob64(st, 8, meta, meta_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 8);
    sqlite3_bind_int64(st, 9, (int64_t)(len + meta_len));
    sqlite3_bind_int64(st, 10, now);
    sqlite3_bind_int64(st, 11, now + (int64_t)ttl_s * 1000);
    src = step_done(st);
    sqlite3_clear_bindings(st);
    if (src != SQLITE_OK)
        goto fail;
    id = sqlite3_last_insert_rowid(s->db);
    if (step_done(s->st[S_COMMIT]) != SQLITE_OK)
        goto fail;
    /* Committed: now the memory follows. */
    if (replaced)
        forget(s, &old);
    remember(s, id, task, key->shape, key->n_images > 0, key->phash[0], (int64_t)(len + meta_len));
    goto out;
fail:
    rc = db_fail(s, err, "store");
    rollback(s);
out:
    sqlite3_clear_bindings(s->st[S_FIND]);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Grow a row array by one; NULL when out of memory. */
static struct row *rows_push(struct row **rows, size_t *n, size_t *cap)
{
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        struct row *nr = realloc(*rows, ncap * sizeof(*nr));
        if (nr == NULL)
            return NULL;
        *rows = nr;
        *cap = ncap;
    }
    return &(*rows)[(*n)++];
}

/*
 * Delete the rows sel selects (bound by the caller) in one transaction: read them, then run
 * del (NULL: delete each by id), commit, and only then forget them. *n = rows deleted.
 * Called with the lock held.
 */
static ap_status delete_rows(struct sqlite_store *s, sqlite3_stmt *sel, sqlite3_stmt *del, long *n,
                             ap_error *err)
{
    struct row *rows = NULL;
    size_t nrows = 0, cap = 0;
    ap_status rc = AP_OK;
    int src;

    if (step_done(s->st[S_BEGIN]) != SQLITE_OK) {
        sqlite3_reset(sel);
        return db_fail(s, err, "begin");
    }
    while ((src = sqlite3_step(sel)) == SQLITE_ROW) {
        struct row *r = rows_push(&rows, &nrows, &cap);
        if (r == NULL) {
            rc = ap_error_set(err, AP_ENOMEM, "cache: out of memory listing rows to delete");
            break;
        }
        row_read(sel, r);
    }
    sqlite3_reset(sel);
    if (rc == AP_OK && src != SQLITE_DONE && src != SQLITE_ROW)
        rc = db_fail(s, err, "list rows");
    for (size_t i = 0; rc == AP_OK && del == NULL && i < nrows; i++) {
        sqlite3_bind_int64(s->st[S_DEL], 1, rows[i].id);
        if (step_done(s->st[S_DEL]) != SQLITE_OK)
            rc = db_fail(s, err, "delete");
    }
    if (rc == AP_OK && del != NULL && step_done(del) != SQLITE_OK)
        rc = db_fail(s, err, "delete");
    if (rc == AP_OK && step_done(s->st[S_COMMIT]) != SQLITE_OK)
        rc = db_fail(s, err, "commit");
    if (rc != AP_OK) {
        rollback(s);
    } else {
        for (size_t i = 0; i < nrows; i++)
            forget(s, &rows[i]);
        *n = (long)nrows;
    }
    free(rows);
    return rc;
}

static ap_status sq_purge(struct ap__store *base, const uint8_t *key, const char *task, long *n,
                          ap_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    ap_status rc = AP_OK;

    pthread_mutex_lock(&s->mu);
    if (key != NULL) {
        sqlite3_bind_blob(s->st[S_FIND], 1, key, 32, SQLITE_STATIC);
        rc = delete_rows(s, s->st[S_FIND], NULL, n, err);
        sqlite3_clear_bindings(s->st[S_FIND]);
    } else if (task != NULL) {
        sqlite3_bind_text(s->st[S_TASK_ROWS], 1, task, -1, SQLITE_STATIC);
        sqlite3_bind_text(s->st[S_DEL_TASK], 1, task, -1, SQLITE_STATIC);
        rc = delete_rows(s, s->st[S_TASK_ROWS], s->st[S_DEL_TASK], n, err);
        sqlite3_clear_bindings(s->st[S_TASK_ROWS]);
        sqlite3_clear_bindings(s->st[S_DEL_TASK]);
    } else if (step_done(s->st[S_DEL_ALL]) != SQLITE_OK) {
        rc = db_fail(s, err, "purge");
    } else {
        *n = (long)sqlite3_changes(s->db);
        groups_clear(s);
        s->entries = s->bytes = 0;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static ap_status sq_stats(struct ap__store *base, ap_cache_stats *st, ap_error *err)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    (void)err;
    pthread_mutex_lock(&s->mu);
    st->entries = s->entries;
    st->bytes = s->bytes;
    pthread_mutex_unlock(&s->mu);
    st->backend_up = true;
    return AP_OK;
}

/* ---- the reaper */

/*
 * Delete expired rows, REAP_BATCH per transaction, releasing the lock between batches so
 * lookups interleave. Called with the lock held; returns with it held.
 */
static void reap(struct sqlite_store *s)
{
    for (;;) {
        long n = 0;
        sqlite3_bind_int64(s->st[S_EXPIRED], 1, ap__cache_wall_ms());
        if (delete_rows(s, s->st[S_EXPIRED], NULL, &n, NULL) != AP_OK || n < REAP_BATCH)
            break;
        pthread_mutex_unlock(&s->mu);
        pthread_mutex_lock(&s->mu);
        if (s->stopping)
            break;
    }
}

static void *reaper_main(void *arg)
{
    struct sqlite_store *s = arg;

    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        reap(s);
        struct timespec until = ap__cache_deadline(s->super.opts.reap_interval_ms);
        while (!s->stopping && pthread_cond_timedwait(&s->cv, &s->mu, &until) == 0)
            ;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- open, free */

static void sq_free(struct ap__store *base)
{
    struct sqlite_store *s = (struct sqlite_store *)base;
    if (s->reaper_on) {
        pthread_mutex_lock(&s->mu);
        s->stopping = true;
        pthread_cond_signal(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->reaper, NULL);
    }
    for (int i = 0; i < N_STMT; i++)
        sqlite3_finalize(s->st[i]);
    sqlite3_close(s->db);
    groups_clear(s);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static const struct ap__store_ops sqlite_ops = {
    .name = "sqlite",
    .get = sq_get,
    .put = sq_put,
    .purge = sq_purge,
    .stats = sq_stats,
    .free = sq_free,
};

/* Schema version check and creation. */
static ap_status schema(struct sqlite_store *s, const char *path, ap_error *err)
{
    sqlite3_stmt *st = NULL;
    int version = -1;

    if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (version < 0)
        return db_fail(s, err, "read schema version");
    if (version != 0 && version != SCHEMA_VERSION)
        return ap_error_set(err, AP_EINVAL,
                            "cache: \"%s\" has cache schema %d, this build knows %d", path, version,
                            SCHEMA_VERSION);
    if (sqlite3_exec(s->db, schema_sql, NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, "PRAGMA user_version = " STR(SCHEMA_VERSION), NULL, NULL, NULL) !=
            SQLITE_OK)
        return db_fail(s, err, "create schema");
    return AP_OK;
}

/* Count every row and index the live ones with images. */
static ap_status rebuild(struct sqlite_store *s, ap_error *err)
{
    sqlite3_stmt *st = NULL;
    int64_t now = ap__cache_wall_ms();
    int src;

    if (sqlite3_prepare_v2(s->db, "SELECT " ROW_COLS ", expires FROM ap_cache", -1, &st, NULL) !=
        SQLITE_OK)
        return db_fail(s, err, "prepare");
    while ((src = sqlite3_step(st)) == SQLITE_ROW) {
        struct row r;
        row_read(st, &r);
        bool live = sqlite3_column_int64(st, 5) > now;
        remember(s, r.id, r.task, r.shape, live && r.has_phash, r.phash0, r.size);
    }
    sqlite3_finalize(st);
    if (src != SQLITE_DONE)
        return db_fail(s, err, "read the table");
    return AP_OK;
}

ap_status ap__cache_sqlite_open(const char *target, const ap_cache_opts *opts,
                                struct ap__store **out, ap_error *err)
{
    struct sqlite_store *s = NULL;
    ap_status rc = AP_OK;

    if (*target == '\0')
        return ap_error_set(err, AP_EINVAL, "cache: sqlite url \"%s\" names no file", opts->url);
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return ap_error_set(err, AP_ENOMEM, "cache: out of memory");
    s->super.ops = &sqlite_ops;
    s->super.opts = *opts;
    s->super.opts.url = NULL;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);

    /* Our mutex serialises the connection: SQLite's own (FULLMUTEX) would be a second one. */
    if (sqlite3_open_v2(target, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        rc = ap_error_set(err, AP_EIO, "cache: cannot open \"%s\": %s", target,
                          s->db ? sqlite3_errmsg(s->db) : "out of memory");
        goto out;
    }
    sqlite3_busy_timeout(s->db, 2000);
    /* WAL: readers never wait for the writer; NORMAL: a crash may lose the last commits, never
     * corrupt (fine for a cache). */
    if (sqlite3_exec(s->db,
                     "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
                     " PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY;",
                     NULL, NULL, NULL) != SQLITE_OK) {
        rc = db_fail(s, err, "configure");
        goto out;
    }
    if ((rc = schema(s, target, err)) != AP_OK)
        goto out;
    for (int i = 0; i < N_STMT; i++) {
        if (sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i],
                               NULL) != SQLITE_OK) {
            rc = db_fail(s, err, "prepare");
            goto out;
        }
    }
    if ((rc = rebuild(s, err)) != AP_OK)
        goto out;
    if (pthread_create(&s->reaper, NULL, reaper_main, s) != 0) {
        rc = ap_error_set(err, AP_ENOMEM, "cache: cannot start the reaper thread");
        goto out;
    }
    s->reaper_on = true;
    *out = &s->super;
    s = NULL;
out:
    if (s != NULL)
        sq_free(&s->super);
    return rc;
}
