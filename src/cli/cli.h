/*
 * cli.h - the aperture command-line tool: one cmd_<name>() per subcommand (cmd_<name>.c), all
 * dispatched from the commands[] table in main.c. Commands are thin: parse options, call the
 * library, print. Exit codes: 0 all ok, 1 some inputs refused (one line each on stderr),
 * 2 usage error.
 */
#ifndef AP_CLI_H
#define AP_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum { AP_EXIT_OK = 0, AP_EXIT_REFUSED = 1, AP_EXIT_USAGE = 2 };

int cmd_prep(int argc, char **argv);
int cmd_tokens(int argc, char **argv);
int cmd_hash(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_dedup(int argc, char **argv);

/* Read a whole file, refusing more than max_bytes (+1 is read to detect "too large").
 * Returns 0 and a malloc'd buffer, or -1 with a message in msg. */
int ap_cli_read_file(const char *path, size_t max_bytes, uint8_t **buf, size_t *len, char *msg,
                     size_t msg_cap);

/* Number of online CPUs (at least 1). */
int ap_cli_ncpus(void);

/*
 * Run fn(i, ctx) for i in [0, n) on jobs threads (jobs <= 1: in the calling thread, in order).
 * With a TTY on stderr, draws a progress bar labelled label. fn must be thread-safe.
 */
void ap_cli_parallel(size_t n, int jobs, const char *label, void (*fn)(size_t i, void *ctx),
                     void *ctx);

/* Write s as a JSON string literal (quoted, escaped). */
void ap_cli_json_str(FILE *f, const char *s);

/* Close an input's JSON object as refused: ,"ok":false,"error":CODE,"message":MSG}\n */
void ap_cli_json_refusal(FILE *f, const char *code, const char *msg);

#endif
