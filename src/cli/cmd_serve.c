/*
 * cmd_serve.c - aperture serve: load the configuration, start the gateway, stop gracefully on
 * SIGTERM/SIGINT (stop accepting, let requests in flight finish up to a deadline).
 */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aperture/config.h"
#include "aperture/gateway.h"
#include "cli/cli.h"

static const char serve_usage[] =
    "usage: aperture serve [--config FILE] [--listen HOST:PORT] [--drain-seconds N]\n"
    "\n"
    "Run the gateway: OpenAI- and Anthropic-compatible proxy endpoints, /v1/analyze,\n"
    "/v1/preprocess, /v1/models, /metrics, /healthz, /readyz. Without a config file the\n"
    "offline 'local' provider serves every request; OPENAI_API_KEY, ANTHROPIC_API_KEY and\n"
    "GEMINI_API_KEY enable those providers. See docs/CONFIG.md.\n"
    "\n"
    "  --config FILE        YAML configuration (default: $APERTURE_CONFIG)\n"
    "  --listen HOST:PORT   listen address (default: $APERTURE_LISTEN or 127.0.0.1:8080)\n"
    "  --drain-seconds N    on SIGTERM, wait up to N s for requests in flight (default 20)\n"
    "\n"
    "Exit status: 0 after a clean stop, 2 for an invalid configuration or usage.\n";

int cmd_serve(int argc, char **argv)
{
    static const struct option lo[] = {{"config", required_argument, 0, 'c'},
                                        {"listen", required_argument, 0, 'l'},
                                        {"drain-seconds", required_argument, 0, 'd'},
                                        {"help", no_argument, 0, 'h'},
                                        {0, 0, 0, 0}};
    const char *config = getenv("APERTURE_CONFIG"), *listen = NULL;
    long drain = 20;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:l:h", lo, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 'l': listen = optarg; break;
        case 'd': drain = strtol(optarg, NULL, 10); break;
        case 'h': fputs(serve_usage, stdout); return AP_EXIT_OK;
        default: fputs(serve_usage, stderr); return AP_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fputs(serve_usage, stderr);
        return AP_EXIT_USAGE;
    }
    if (config && config[0] == '\0')
        config = NULL;

    /* Tesseract's OpenMP threads make OCR slower, not faster, next to our own worker per core;
     * libgomp reads OMP_THREAD_LIMIT only at start-up, so set it and start again once. */
    if (getenv("OMP_THREAD_LIMIT") == NULL) {
        setenv("OMP_THREAD_LIMIT", "1", 1);
        char *const *av = argv - 1; /* argv[-1] is "aperture" (main passed argv + 1) */
        execv("/proc/self/exe", av);
        /* exec failed: carry on with OpenMP's default */
    }

    /* Block the stop signals before any thread starts, so every thread inherits the mask and
     * sigwait() below is the only place they are seen. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    ap_config *cfg = NULL;
    ap_error err = {0};
    if (ap_config_load(config, listen, &cfg, &err) != AP_OK) {
        fprintf(stderr, "aperture serve: invalid configuration: %s\n", err.msg);
        return AP_EXIT_USAGE;
    }
    for (size_t i = 0; i < cfg->n_warnings; i++)
        fprintf(stderr, "aperture serve: warning: %s\n", cfg->warnings[i]);
    ap_gateway *gw = NULL;
    if (ap_gateway_start(cfg, &gw, &err) != AP_OK) {
        fprintf(stderr, "aperture serve: %s\n", err.msg);
        ap_config_free(cfg);
        return AP_EXIT_USAGE;
    }
    fprintf(stderr, "aperture serve: listening on %s (port %u), %zu provider(s), default model %s%s\n",
            cfg->listen, ap_gateway_port(gw), cfg->n_providers,
            cfg->default_model ? cfg->default_model : "local",
            cfg->n_client_keys ? "" : "; no client keys configured: no auth, loopback only");
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "aperture serve: %s received, draining for up to %ld s\n",
            sig == SIGTERM ? "SIGTERM" : "SIGINT", drain);
    ap_gateway_stop(gw, drain * 1000);
    ap_config_free(cfg);
    return AP_EXIT_OK;
}
