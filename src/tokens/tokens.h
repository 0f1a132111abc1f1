/*
 * tokens.h (internal) - model-name matching shared by the token rules (tokens.c) and the price
 * table (pricing.c), so both agree on which entry a name like "openai/GPT-4o-2024-08-06" means.
 */
#ifndef AP_TOKENS_INTERNAL_H
#define AP_TOKENS_INTERNAL_H

#include <stddef.h>

/* The name without a routing prefix: the part after the last '/' ("openai/gpt-4o" -> "gpt-4o"). */
const char *ap__tokens_base_name(const char *model);

/*
 * If name starts with prefix (ASCII case-insensitive) and the prefix ends at a name boundary
 * (end of name, or one of "-._:@"), return strlen(prefix); else 0. So "gpt-4o" matches
 * "gpt-4o-2024-08-06" but not "gpt-4omni", and an empty prefix never matches.
 */
size_t ap__tokens_prefix_match(const char *name, const char *prefix);

/* 1 if needle occurs in haystack, ASCII case-insensitive. */
int ap__tokens_contains(const char *haystack, const char *needle);

#endif
