/*
 * config_int.h (internal) - the YAML side of the configuration loader, shared by config.c and
 * config_yaml.c.
 *
 * libcyaml loads the file into plain structs against a schema and reports structural errors
 * (unknown key, a list where a value belongs, a missing required key) through its log callback,
 * with a backtrace. What it cannot do is say where a node was once loading succeeded, and
 * config.c validates meaning (unknown provider, negative number, duplicate name) after the
 * load. So before libcyaml runs, one pass of libyaml's event parser (which libcyaml is built
 * on and links) checks the syntax with exact positions and records the line of every mapping
 * key and sequence entry under its path ("models[2].provider"). Every error message is then
 * "NAME:LINE: PATH: why".
 *
 * Nothing here keeps state between calls.
 */
#ifndef AP_CORE_CONFIG_INT_H
#define AP_CORE_CONFIG_INT_H

#include <stdbool.h>
#include <stddef.h>

#include <cyaml/cyaml.h>

#include "aperture/status.h"

/* Path -> line of every mapping key and sequence entry of the first YAML document. */
struct ap__yindex;

/*
 * Parse buf/len (need not be NUL-terminated) and index it. name labels messages. A syntax error
 * fails with AP_EINVAL and "NAME:LINE: syntax error: <libyaml's words>". On success *out is
 * (transfer full): ap__config_yindex_free().
 */
ap_status ap__config_yindex_build(const char *buf, size_t len, const char *name,
                                  struct ap__yindex **out, ap_error *err);

/*
 * The 1-based line of the nth (0-based) occurrence of path (a key appears twice only in a
 * document with a duplicate key). A path that was not recorded (inside an alias, deeper than
 * the index goes) gets the line of its closest recorded ancestor; 0 when there is none or ix is
 * NULL.
 */
unsigned ap__config_yindex_line(const struct ap__yindex *ix, const char *path, unsigned nth);

/*
 * Whether path itself was recorded (no fallback to ancestors): tells `key: []`, which libcyaml
 * loads as no list at all, from a key that is absent. false when ix is NULL.
 */
bool ap__config_yindex_has(const struct ap__yindex *ix, const char *path);

void ap__config_yindex_free(struct ap__yindex *ix);

/*
 * Load buf/len with libcyaml against schema (a top-level mapping with CYAML_FLAG_POINTER).
 * On success *out is the loaded data (NULL for an empty document), (transfer full):
 * ap__config_cyaml_free() with the same schema. On failure AP_EINVAL (AP_ENOMEM when libcyaml
 * ran out of memory) with libcyaml's complaint rewritten as "NAME:LINE: PATH: why", lines
 * taken from ix.
 */
ap_status ap__config_cyaml_load(const char *buf, size_t len, const char *name,
                                const struct ap__yindex *ix, const cyaml_schema_value_t *schema,
                                void **out, ap_error *err);

void ap__config_cyaml_free(const cyaml_schema_value_t *schema, void *data);

#endif
