/*
 * main.c - the aperture command: a table of subcommands, each a thin cmd_<name>() over the
 * library.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

#define APERTURE_VERSION "0.1.0"

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
};

static const struct command commands[] = {
    {"prep", cmd_prep, "preprocess images for a vision model (resize, orient, strip, re-encode)"},
    {"tokens", cmd_tokens, "image tokens and USD per model, original vs processed"},
    {"hash", cmd_hash, "sha256, pHash and dHash of processed images"},
    {"dedup", cmd_dedup, "group exact and near-duplicate images of a folder (catalog dedup)"},
    {"serve", cmd_serve, "run the gateway (OpenAI/Anthropic-compatible proxy, native API)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: aperture <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n'aperture <command> --help' describes a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return AP_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0) {
        usage(stdout);
        return AP_EXIT_OK;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "version") == 0) {
        printf("aperture %s\n", APERTURE_VERSION);
        return AP_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (strcmp(name, commands[i].name) == 0)
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "aperture: unknown command \"%s\"\n\n", name);
    usage(stderr);
    return AP_EXIT_USAGE;
}
