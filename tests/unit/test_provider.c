/*
 * test_provider.c - the provider translations (openai.c, anthropic.c, gemini.c, wire.c).
 *
 * Data-driven: tables of canonical request -> expected upstream request, upstream response ->
 * expected canonical response, error bodies -> AP_EUPSTREAM messages, and upstream streams ->
 * expected canonical chunks. Every stream is replayed whole, a byte at a time and in random
 * splits, with LF, CRLF and CR line ends, and must give the same chunks each time. The
 * Anthropic front end is checked both ways and round trip. Then every valid input is mutated
 * at random and fed again: the code must fail cleanly (a code, a message, valid UTF-8, never
 * the key) and never crash.
 *
 * JSON in the tables is written with single quotes, turned into double quotes on load (an
 * apostrophe inside a string is \u0027).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "provider/provider.h"
#include "provider/wire.h"

#define KEY "sk-test-SECRET-0123456789abcdef"

/* ---- fixtures ------------------------------------------------------------------------------ */

enum conf_id { C_OPENAI, C_COMPAT, C_ANTHROPIC, C_GEMINI, C_NOURL, C_BADKEY, C_ANTH_NOKEY };

static char s_openai[] = "openai", s_compat[] = "my-vllm", s_anthropic[] = "anthropic",
            s_gemini[] = "gemini", s_nourl[] = "nourl", s_badkey[] = "badkey";
static char u_openai[] = "https://api.openai.com/v1/", u_compat[] = "http://127.0.0.1:8000/v1",
            u_anthropic[] = "https://api.anthropic.com",
            u_gemini[] = "https://generativelanguage.googleapis.com/v1beta";
static char k_key[] = KEY, k_bad[] = "sk-abc\r\nX-Evil: 1";

static ap_provider_conf confs[] = {
    [C_OPENAI] = {.name = s_openai,
                  .type = AP_PROVIDER_OPENAI,
                  .base_url = u_openai,
                  .api_key = k_key},
    [C_COMPAT] = {.name = s_compat, .type = AP_PROVIDER_OPENAI_COMPAT, .base_url = u_compat},
    [C_ANTHROPIC] = {.name = s_anthropic,
                     .type = AP_PROVIDER_ANTHROPIC,
                     .base_url = u_anthropic,
                     .api_key = k_key},
    [C_GEMINI] = {.name = s_gemini,
                  .type = AP_PROVIDER_GEMINI,
                  .base_url = u_gemini,
                  .api_key = k_key},
    [C_NOURL] = {.name = s_nourl, .type = AP_PROVIDER_OPENAI, .api_key = k_key},
    [C_BADKEY] = {.name = s_badkey,
                  .type = AP_PROVIDER_OPENAI,
                  .base_url = u_openai,
                  .api_key = k_bad},
    [C_ANTH_NOKEY] = {.name = s_anthropic, .type = AP_PROVIDER_ANTHROPIC, .base_url = u_anthropic},
};

#define OPENAI    (&ap__openai_ops)
#define ANTHROPIC (&ap__anthropic_ops)
#define GEMINI    (&ap__gemini_ops)

static const ap_provider_conf *conf_for(const struct ap__provider_ops *ops)
{
    return ops == OPENAI      ? &confs[C_OPENAI]
           : ops == ANTHROPIC ? &confs[C_ANTHROPIC]
                              : &confs[C_GEMINI];
}

/* The table notation: ' -> ". */
static char *unq(const char *s)
{
    char *d = strdup(s);
    assert_non_null(d);
    for (char *p = d; *p; p++)
        if (*p == '\'')
            *p = '"';
    return d;
}

static json_t *J(const char *s)
{
    char *d = unq(s);
    json_error_t e;
    json_t *j = json_loads(d, JSON_DECODE_ANY, &e);
    if (j == NULL)
        fail_msg("bad test json (%s): %s", e.text, d);
    free(d);
    return j;
}

static char *dump(const json_t *j)
{
    return j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : strdup("(null)");
}

/* Structural match; in expected, "<any>" matches anything present, "<int>" any integer, "<str>"
 * any string. */
static bool jmatch(const json_t *exp, const json_t *act, char *path, size_t cap)
{
    const char *s = json_string_value(exp);
    if (s != NULL && strcmp(s, "<any>") == 0)
        return act != NULL;
    if (s != NULL && strcmp(s, "<int>") == 0)
        return json_is_integer(act);
    if (s != NULL && strcmp(s, "<str>") == 0)
        return json_is_string(act);
    if (act == NULL || json_typeof(exp) != json_typeof(act))
        return false;
    size_t len = strlen(path);
    if (json_is_object(exp)) {
        const char *k;
        const json_t *v;
        if (json_object_size(exp) != json_object_size(act))
            return false;
        json_object_foreach((json_t *)exp, k, v)
        {
            snprintf(path + len, cap - len, ".%s", k);
            if (!jmatch(v, json_object_get(act, k), path, cap))
                return false;
        }
        path[len] = '\0';
        return true;
    }
    if (json_is_array(exp)) {
        if (json_array_size(exp) != json_array_size(act))
            return false;
        for (size_t i = 0; i < json_array_size(exp); i++) {
            snprintf(path + len, cap - len, "[%zu]", i);
            if (!jmatch(json_array_get(exp, i), json_array_get(act, i), path, cap))
                return false;
        }
        path[len] = '\0';
        return true;
    }
    return json_equal((json_t *)exp, (json_t *)act);
}

static void assert_json(const char *what, const char *expected, const json_t *actual)
{
    json_t *exp = J(expected);
    char path[512] = "";
    if (!jmatch(exp, actual, path, sizeof(path))) {
        char *a = dump(exp), *b = dump(actual);
        print_error("%s: mismatch at '%s'\nexpected: %s\nactual:   %s\n", what, path, a, b);
        free(a);
        free(b);
        json_decref(exp);
        fail();
    }
    json_decref(exp);
}

static bool valid_utf8(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        size_t n = *p < 0x80         ? 1
                   : (*p >> 5) == 6  ? 2
                   : (*p >> 4) == 14 ? 3
                   : (*p >> 3) == 30 ? 4
                                     : 0;
        if (n == 0)
            return false;
        for (size_t i = 1; i < n; i++)
            if ((p[i] & 0xC0) != 0x80)
                return false;
        p += n;
    }
    return true;
}

/* Every failure: a code, a message that is valid UTF-8 and never quotes the key. */
static void check_err(const char *what, ap_status st, const ap_error *err)
{
    if (st == AP_OK)
        return;
    if (err->msg[0] == '\0')
        fail_msg("%s: %s without a message", what, ap_strerror(st));
    /* No run of 8 characters of the key, wherever the upstream (or a mutation) cut it. */
    static const char key[] = KEY;
    for (size_t k = 0; k + 8 <= sizeof(key) - 1; k++) {
        char window[9];
        memcpy(window, key + k, 8);
        window[8] = '\0';
        if (strstr(err->msg, window) != NULL)
            fail_msg("%s: the key leaked into \"%s\"", what, err->msg);
    }
    if (!valid_utf8(err->msg))
        fail_msg("%s: message is not utf-8", what);
}

/* ---- build --------------------------------------------------------------------------------- */

struct build_case {
    const char *name;
    const struct ap__provider_ops *ops;
    enum conf_id conf;
    const char *model;
    bool stream;
    const char *req;
    const char *url;
    const char *headers; /* joined with \n, in order */
    const char *body;
};

#define IMG_REQ_OPENAI                                                                             \
    "{'model':'gpt-4o','messages':[{'role':'user','content':[{'type':'text','text':'What is "      \
    "this?'},{'type':'image_url','image_url':{'url':'data:image/png;base64,iVBORw0KGgo=',"         \
    "'detail':'high'}}]}],'max_tokens':300,'temperature':0.2"

static const struct build_case build_cases[] = {
    {"openai plain", OPENAI, C_OPENAI, "gpt-4o-2024-08-06", false,
     IMG_REQ_OPENAI ",'stream_options':{'include_usage':true}}",
     "https://api.openai.com/v1/chat/completions",
     "Content-Type: application/json\nAccept: application/json\nAuthorization: Bearer " KEY,
     "{'model':'gpt-4o-2024-08-06','messages':[{'role':'user','content':[{'type':'text','text':"
     "'What is this?'},{'type':'image_url','image_url':{'url':'data:image/png;base64,iVBORw0KGgo="
     "','detail':'high'}}]}],'max_tokens':300,'temperature':0.2,'stream':false}"},
    {"openai stream asks for usage", OPENAI, C_OPENAI, "gpt-4o", true, IMG_REQ_OPENAI "}",
     "https://api.openai.com/v1/chat/completions",
     "Content-Type: application/json\nAccept: text/event-stream\nAuthorization: Bearer " KEY,
     "{'model':'gpt-4o','messages':[{'role':'user','content':[{'type':'text','text':'What is "
     "this?'},{'type':'image_url','image_url':{'url':'data:image/png;base64,iVBORw0KGgo=',"
     "'detail':'high'}}]}],'max_tokens':300,'temperature':0.2,'stream':true,'stream_options':{"
     "'include_usage':true}}"},
    {"openai stream keeps client stream_options", OPENAI, C_OPENAI, "gpt-4o", true,
     "{'messages':[{'role':'user','content':'hi'}],'stream_options':{'include_usage':false}}",
     "https://api.openai.com/v1/chat/completions",
     "Content-Type: application/json\nAccept: text/event-stream\nAuthorization: Bearer " KEY,
     "{'messages':[{'role':'user','content':'hi'}],'stream_options':{'include_usage':false},"
     "'model':'gpt-4o','stream':true}"},
    {"openai-compatible without key passes tools", OPENAI, C_COMPAT, "qwen2.5-vl", false,
     "{'model':'local-vl','messages':[{'role':'user','content':'hi'}],'tools':[{'type':"
     "'function','function':{'name':'f'}}],'seed':7}",
     "http://127.0.0.1:8000/v1/chat/completions",
     "Content-Type: application/json\nAccept: application/json",
     "{'model':'qwen2.5-vl','messages':[{'role':'user','content':'hi'}],'tools':[{'type':"
     "'function','function':{'name':'f'}}],'seed':7,'stream':false}"},

    {"anthropic full mapping", ANTHROPIC, C_ANTHROPIC, "claude-sonnet-4-5", false,
     "{'model':'claude','messages':[{'role':'system','content':'You are terse.'},{'role':"
     "'developer','content':[{'type':'text','text':'Answer in French.'}]},{'role':'user',"
     "'content':[{'type':'text','text':'Describe.'},{'type':'image_url','image_url':{'url':"
     "'data:image/jpeg;base64,/9j/4AAQ'}},{'type':'image_url','image_url':'https://example.com/"
     "a.png'}]},{'role':'assistant','content':'Une image.'},{'role':'user','content':'More?'}],"
     "'max_completion_tokens':512,'max_tokens':100,'temperature':0.5,'top_p':0.9,'stop':'END',"
     "'user':'u-42','presence_penalty':0.1,'tool_choice':'none','tools':[]}",
     "https://api.anthropic.com/v1/messages",
     "content-type: application/json\naccept: application/json\nanthropic-version: "
     "2023-06-01\nx-api-key: " KEY,
     "{'model':'claude-sonnet-4-5','max_tokens':512,'system':'You are terse.\\n\\nAnswer in "
     "French.','messages':[{'role':'user','content':[{'type':'text','text':'Describe.'},{'type':"
     "'image','source':{'type':'base64','media_type':'image/jpeg','data':'/9j/4AAQ'}},{'type':"
     "'image','source':{'type':'url','url':'https://example.com/a.png'}}]},{'role':'assistant',"
     "'content':'Une image.'},{'role':'user','content':'More?'}],'temperature':0.5,'top_p':0.9,"
     "'stop_sequences':['END'],'metadata':{'user_id':'u-42'}}"},
    {"anthropic stream, default max_tokens, json_object", ANTHROPIC, C_ANTH_NOKEY, "claude-x", true,
     "{'messages':[{'role':'user','content':'List colors.'}],'response_format':{'type':"
     "'json_object'},'stop':['a','b'],'stream':true,'stream_options':{'include_usage':true}}",
     "https://api.anthropic.com/v1/messages",
     "content-type: application/json\naccept: text/event-stream\nanthropic-version: 2023-06-01",
     "{'model':'claude-x','max_tokens':4096,'system':'Answer with a single JSON object and "
     "nothing else: no prose, no markdown code fences.','messages':[{'role':'user','content':"
     "'List colors.'}],'stop_sequences':['a','b'],'stream':true}"},
    {"anthropic json_schema goes into the system prompt", ANTHROPIC, C_ANTHROPIC, "claude-x", false,
     "{'messages':[{'role':'system','content':'Extract.'},{'role':'user','content':'Invoice 7'}],"
     "'response_format':{'type':'json_schema','json_schema':{'name':'inv','schema':{'type':"
     "'object','properties':{'n':{'type':'integer'}}}}},'max_tokens':64,'stop':null}",
     "https://api.anthropic.com/v1/messages",
     "content-type: application/json\naccept: application/json\nanthropic-version: "
     "2023-06-01\nx-api-key: " KEY,
     "{'model':'claude-x','max_tokens':64,'system':'Extract.\\n\\nAnswer with a single JSON "
     "value that conforms to the JSON Schema below and nothing else: no prose, no markdown code "
     "fences.\\n{\\'type\\':\\'object\\',\\'properties\\':{\\'n\\':{\\'type\\':\\'integer\\'}}}"
     "','messages':[{'role':'user','content':'Invoice 7'}]}"},

    {"gemini full mapping", GEMINI, C_GEMINI, "models/gemini-2.0-flash", false,
     "{'messages':[{'role':'system','content':'Be brief.'},{'role':'user','content':[{'type':"
     "'text','text':'What is it?'},{'type':'image_url','image_url':{'url':'data:image/webp;"
     "base64,UklGRg=='}}]},{'role':'assistant','content':'A cat.'},{'role':'user','content':''},"
     "{'role':'user','content':'Sure?'}],'max_tokens':256,'temperature':1,'top_p':0.95,'stop':"
     "'STOP','response_format':{'type':'json_object'},'seed':3}",
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
     "Content-Type: application/json\nAccept: application/json\nx-goog-api-key: " KEY,
     "{'contents':[{'role':'user','parts':[{'text':'What is it?'},{'inline_data':{'mime_type':"
     "'image/webp','data':'UklGRg=='}}]},{'role':'model','parts':[{'text':'A cat.'}]},{'role':"
     "'user','parts':[{'text':'Sure?'}]}],'systemInstruction':{'parts':[{'text':'Be brief.'}]},"
     "'generationConfig':{'maxOutputTokens':256,'temperature':1,'topP':0.95,'stopSequences':["
     "'STOP'],'responseMimeType':'application/json'}}"},
    {"gemini stream, json_schema", GEMINI, C_GEMINI, "gemini-2.5-pro", true,
     "{'messages':[{'role':'user','content':'Go'}],'response_format':{'type':'json_schema',"
     "'json_schema':{'schema':{'type':'array'}}}}",
     "https://generativelanguage.googleapis.com/v1beta/models/"
     "gemini-2.5-pro:streamGenerateContent?alt=sse",
     "Content-Type: application/json\nAccept: text/event-stream\nx-goog-api-key: " KEY,
     "{'contents':[{'role':'user','parts':[{'text':'Go'}]}],'systemInstruction':{'parts':[{"
     "'text':'Answer with a single JSON value that conforms to the JSON Schema below and "
     "nothing else: no prose, no markdown code fences.\\n{\\'type\\':\\'array\\'}'}]},"
     "'generationConfig':{'responseMimeType':'application/json'}}"},
    {"gemini minimal", GEMINI, C_GEMINI, "gemini-2.0-flash", false,
     "{'messages':[{'role':'user','content':'Hi'}]}",
     "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
     "Content-Type: application/json\nAccept: application/json\nx-goog-api-key: " KEY,
     "{'contents':[{'role':'user','parts':[{'text':'Hi'}]}]}"},
};

static void test_provider__build_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(build_cases) / sizeof(build_cases[0]); i++) {
        const struct build_case *c = &build_cases[i];
        ap_error err = {0};
        struct ap__upreq r = {0};
        json_t *req = J(c->req), *before = json_deep_copy(req);
        ap_status st = c->ops->build(&confs[c->conf], c->model, req, c->stream, &r, &err);
        if (st != AP_OK)
            fail_msg("%s: %s %s", c->name, ap_strerror(st), err.msg);
        assert_string_equal(r.url, c->url);
        char joined[1024] = "";
        for (size_t h = 0; h < r.n_headers; h++)
            snprintf(joined + strlen(joined), sizeof(joined) - strlen(joined), "%s%s",
                     h ? "\n" : "", r.headers[h]);
        assert_string_equal(joined, c->headers);
        assert_int_equal(strlen(r.body), r.body_len);
        json_t *body = json_loadb(r.body, r.body_len, 0, NULL);
        assert_non_null(body);
        assert_json(c->name, c->body, body);
        /* build() never writes to the canonical request. */
        assert_true(json_equal(req, before));
        json_decref(body);
        json_decref(req);
        json_decref(before);
        ap__upreq_release(&r);
        assert_null(r.url);
        ap__upreq_release(&r); /* twice is harmless */
    }
}

struct build_err_case {
    const struct ap__provider_ops *ops;
    enum conf_id conf;
    const char *model;
    const char *req;
    ap_status code;
    const char *msg;
};

static const struct build_err_case build_err_cases[] = {
    {OPENAI, C_OPENAI, "m", "[]", AP_EINVAL, "openai: the request is not a json object"},
    {OPENAI, C_OPENAI, "", "{}", AP_EINVAL, "openai: no upstream model"},
    {OPENAI, C_NOURL, "m", "{'messages':[]}", AP_EINVAL,
     "openai: provider \"nourl\" has no base_url"},
    {OPENAI, C_BADKEY, "m", "{'messages':[]}", AP_EINVAL,
     "openai: header \"Authorization\" holds a line break"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'user','content':'x'}],'tools':[{}]}",
     AP_EINVAL, "anthropic: tools are not supported yet"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'tool','content':'x'}]}", AP_EINVAL,
     "anthropic: tools are not supported yet"},
    {ANTHROPIC, C_ANTHROPIC, "m",
     "{'messages':[{'role':'assistant','content':null,'tool_calls':[{'id':'1'}]}]}", AP_EINVAL,
     "anthropic: tools are not supported yet"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{}", AP_EINVAL,
     "anthropic: \"messages\" must be a non-empty array"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[]}", AP_EINVAL,
     "anthropic: \"messages\" must be a non-empty array"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':{}}", AP_EINVAL,
     "anthropic: \"messages\" must be a non-empty array"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':['hi']}", AP_EINVAL,
     "anthropic: messages[0] is not an object"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':5}]}", AP_EINVAL,
     "anthropic: messages[0].role must be a string"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'robot','content':'x'}]}", AP_EINVAL,
     "anthropic: messages[0].role is not one of system, developer, user, assistant"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'user','content':5}]}", AP_EINVAL,
     "anthropic: messages[0].content must be a string or an array"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'user'}]}", AP_EINVAL,
     "anthropic: messages[0].content must be a string or an array"},
    {ANTHROPIC, C_ANTHROPIC, "m",
     "{'messages':[{'role':'user','content':[{'type':'input_audio','input_audio':{}}]}]}",
     AP_EINVAL, "anthropic: messages[0].content[0].type is not supported (text and image_url are)"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'user','content':['x']}]}", AP_EINVAL,
     "anthropic: messages[0].content[0] must be an object with a type"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'user','content':[{'type':'text'}]}]}",
     AP_EINVAL, "anthropic: messages[0].content[0].text must be a string"},
    {ANTHROPIC, C_ANTHROPIC, "m",
     "{'messages':[{'role':'user','content':[{'type':'image_url','image_url':{}}]}]}", AP_EINVAL,
     "anthropic: messages[0].content[0].image_url.url must be a string"},
    {ANTHROPIC, C_ANTHROPIC, "m",
     "{'messages':[{'role':'user','content':[{'type':'image_url','image_url':{'url':'ftp://x/y'}"
     "}]}]}",
     AP_EINVAL,
     "anthropic: messages[0].content[0]: the image url must be a base64 data: url or an http(s) "
     "url"},
    {ANTHROPIC, C_ANTHROPIC, "m",
     "{'messages':[{'role':'user','content':[{'type':'image_url','image_url':{'url':"
     "'data:image/png,abc'}}]}]}",
     AP_EINVAL,
     "anthropic: messages[0].content[0]: the image url must be a base64 data: url or an http(s) "
     "url"},
    {ANTHROPIC, C_ANTHROPIC, "m",
     "{'messages':[{'role':'user','content':[{'type':'image_url','image_url':{'url':"
     "'data:;base64,abc'}}]}]}",
     AP_EINVAL,
     "anthropic: messages[0].content[0]: the image url must be a base64 data: url or an http(s) "
     "url"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'user','content':'x'}],'max_tokens':0}",
     AP_EINVAL, "anthropic: \"max_tokens\" must be a positive integer"},
    {ANTHROPIC, C_ANTHROPIC, "m",
     "{'messages':[{'role':'user','content':'x'}],'max_completion_tokens':'9'}", AP_EINVAL,
     "anthropic: \"max_completion_tokens\" must be a positive integer"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'user','content':'x'}],'max_tokens':1.5}",
     AP_EINVAL, "anthropic: \"max_tokens\" must be a positive integer"},
    {ANTHROPIC, C_ANTHROPIC, "m",
     "{'messages':[{'role':'user','content':'x'}],'temperature':'hot'}", AP_EINVAL,
     "anthropic: \"temperature\" must be a number"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'user','content':'x'}],'top_p':[]}",
     AP_EINVAL, "anthropic: \"top_p\" must be a number"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'user','content':'x'}],'stop':5}",
     AP_EINVAL, "anthropic: \"stop\" must be a string or an array of strings"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'user','content':'x'}],'stop':['a',1]}",
     AP_EINVAL, "anthropic: \"stop\" must be a string or an array of strings"},
    {ANTHROPIC, C_ANTHROPIC, "m",
     "{'messages':[{'role':'user','content':'x'}],'response_format':'json'}", AP_EINVAL,
     "anthropic: \"response_format\" must be an object with a type"},
    {ANTHROPIC, C_ANTHROPIC, "m",
     "{'messages':[{'role':'user','content':'x'}],'response_format':{'type':'xml'}}", AP_EINVAL,
     "anthropic: \"response_format\".type is not one of text, json_object, json_schema"},
    {ANTHROPIC, C_ANTHROPIC, "m",
     "{'messages':[{'role':'user','content':'x'}],'response_format':{'type':'json_schema'}}",
     AP_EINVAL, "anthropic: \"response_format\".json_schema.schema must be an object"},
    {ANTHROPIC, C_ANTHROPIC, "m", "{'messages':[{'role':'user','content':'x'}],'n':2}", AP_EINVAL,
     "anthropic: \"n\" other than 1 is not supported"},
    {ANTHROPIC, C_ANTHROPIC, "m",
     "{'messages':[{'role':'system','content':[{'type':'image_url','image_url':'http://a/b'}]},"
     "{'role':'user','content':'x'}]}",
     AP_EINVAL, "anthropic: messages[0].content[0]: a system message may only hold text"},
    {ANTHROPIC, C_ANTHROPIC, NULL, "{'messages':[{'role':'user','content':'x'}]}", AP_EINVAL,
     "anthropic: no upstream model"},
    {GEMINI, C_GEMINI, "gemini-2.0-flash",
     "{'messages':[{'role':'user','content':[{'type':'image_url','image_url':{'url':"
     "'https://example.com/a.png'}}]}]}",
     AP_EINVAL, "gemini: image URLs must be fetched first"},
    {GEMINI, C_GEMINI, "gemini-2.0-flash",
     "{'messages':[{'role':'user','content':[{'type':'image_url','image_url':{'url':'blob:x'}}]}"
     "]}",
     AP_EINVAL, "gemini: messages[0].content[0]: the image url must be a base64 data: url"},
    {GEMINI, C_GEMINI, "../../v1/files", "{'messages':[{'role':'user','content':'x'}]}", AP_EINVAL,
     "gemini: the upstream model name is not a plain model id"},
    {GEMINI, C_GEMINI, "gemini?key=x", "{'messages':[{'role':'user','content':'x'}]}", AP_EINVAL,
     "gemini: the upstream model name is not a plain model id"},
    {GEMINI, C_GEMINI, "models/", "{'messages':[{'role':'user','content':'x'}]}", AP_EINVAL,
     "gemini: the upstream model name is not a plain model id"},
    {GEMINI, C_GEMINI, "g", "{'messages':[{'role':'function','content':'x'}]}", AP_EINVAL,
     "gemini: tools are not supported yet"},
    {GEMINI, C_GEMINI, "g", "{'messages':[{'role':'user','content':[{'type':'file','file':{}}]}]}",
     AP_EINVAL, "gemini: messages[0].content[0].type is not supported (text and image_url are)"},
};

static void test_provider__build_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(build_err_cases) / sizeof(build_err_cases[0]); i++) {
        const struct build_err_case *c = &build_err_cases[i];
        ap_error err = {0};
        struct ap__upreq r = {0};
        json_t *req = J(c->req);
        ap_status st = c->ops->build(&confs[c->conf], c->model, req, false, &r, &err);
        if (st != c->code || strcmp(err.msg, c->msg) != 0)
            fail_msg("case %zu: got %s \"%s\", want %s \"%s\"", i, ap_strerror(st), err.msg,
                     ap_strerror(c->code), c->msg);
        check_err(c->msg, st, &err);
        assert_null(r.url); /* untouched on failure */
        json_decref(req);
    }
}

/* ---- parse --------------------------------------------------------------------------------- */

struct parse_case {
    const char *name;
    const struct ap__provider_ops *ops;
    long status;
    const char *body;
    const char *expect;
    long in, out, image;
};

#define OAI_RESP                                                                                   \
    "{'id':'chatcmpl-abc','object':'chat.completion','created':1700000000,'model':'gpt-4o-2024-"   \
    "08-06','choices':[{'index':0,'message':{'role':'assistant','content':'A red bicycle.'},"      \
    "'finish_reason':'stop'}],'usage':{'prompt_tokens':812,'completion_tokens':9,'total_tokens':"  \
    "821}}"
#define ANTH_RESP                                                                                  \
    "{'id':'msg_01XFD','type':'message','role':'assistant','model':'claude-sonnet-4-5-20250929',"  \
    "'content':[{'type':'thinking','thinking':'hmm','signature':'x'},{'type':'text','text':'A "    \
    "red '},{'type':'text','text':'bicycle.'}],'stop_reason':'end_turn','stop_sequence':null,"     \
    "'usage':{'input_tokens':1200,'cache_creation_input_tokens':100,'cache_read_input_tokens':"    \
    "20,'output_tokens':12}}"
#define GEM_RESP                                                                                   \
    "{'candidates':[{'content':{'parts':[{'text':'Thinking...','thought':true},{'text':'A red "    \
    "'},{'text':'bicycle.'}],'role':'model'},'finishReason':'STOP','index':0,'safetyRatings':[]}"  \
    "],'usageMetadata':{'promptTokenCount':300,'candidatesTokenCount':5,'thoughtsTokenCount':20,"  \
    "'totalTokenCount':325,'promptTokensDetails':[{'modality':'TEXT','tokenCount':42},{"           \
    "'modality':'IMAGE','tokenCount':258}]},'modelVersion':'gemini-2.0-flash','responseId':"       \
    "'abcXYZ'}"

static const struct parse_case parse_cases[] = {
    {"openai", OPENAI, 200, OAI_RESP, OAI_RESP, 812, 9, -1},
    {"openai without usage", OPENAI, 200,
     "{'id':'x','choices':[{'index':0,'message':{'role':'assistant','content':'ok'},"
     "'finish_reason':'stop'}]}",
     "{'id':'x','choices':[{'index':0,'message':{'role':'assistant','content':'ok'},"
     "'finish_reason':'stop'}]}",
     -1, -1, -1},
    {"anthropic", ANTHROPIC, 200, ANTH_RESP,
     "{'id':'msg_01XFD','object':'chat.completion','created':'<int>','model':'claude-sonnet-4-5-"
     "20250929','choices':[{'index':0,'message':{'role':'assistant','content':'A red bicycle.'},"
     "'logprobs':null,'finish_reason':'stop'}],'usage':{'prompt_tokens':1320,'completion_tokens':"
     "12,'total_tokens':1332}}",
     1320, 12, -1},
    {"anthropic empty content", ANTHROPIC, 201,
     "{'id':'msg_2','type':'message','content':[],'stop_reason':'max_tokens','usage':{"
     "'input_tokens':3,'output_tokens':0}}",
     "{'id':'msg_2','object':'chat.completion','created':'<int>','model':'','choices':[{'index':"
     "0,'message':{'role':'assistant','content':''},'logprobs':null,'finish_reason':'length'}],"
     "'usage':{'prompt_tokens':3,'completion_tokens':0,'total_tokens':3}}",
     3, 0, -1},
    {"gemini", GEMINI, 200, GEM_RESP,
     "{'id':'abcXYZ','object':'chat.completion','created':'<int>','model':'gemini-2.0-flash',"
     "'choices':[{'index':0,'message':{'role':'assistant','content':'A red bicycle.'},'logprobs':"
     "null,'finish_reason':'stop'}],'usage':{'prompt_tokens':300,'completion_tokens':25,"
     "'total_tokens':325}}",
     300, 25, 258},
    {"gemini blocked prompt", GEMINI, 200,
     "{'promptFeedback':{'blockReason':'SAFETY'},'usageMetadata':{'promptTokenCount':10}}",
     "{'id':'<str>','object':'chat.completion','created':'<int>','model':'','choices':[{'index':"
     "0,'message':{'role':'assistant','content':''},'logprobs':null,'finish_reason':"
     "'content_filter'}],'usage':{'prompt_tokens':10,'completion_tokens':0,'total_tokens':10}}",
     10, -1, -1},
};

static void check_parse(const struct parse_case *c)
{
    ap_error err = {0};
    struct ap__usage u = {-7, -7, -7};
    json_t *resp = NULL;
    char *body = unq(c->body);
    ap_status st = c->ops->parse(conf_for(c->ops), c->status, body, strlen(body), &resp, &u, &err);
    if (st != AP_OK)
        fail_msg("%s: %s %s", c->name, ap_strerror(st), err.msg);
    assert_json(c->name, c->expect, resp);
    if (u.input_tokens != c->in || u.output_tokens != c->out || u.image_tokens != c->image)
        fail_msg("%s: usage %ld/%ld/%ld, want %ld/%ld/%ld", c->name, u.input_tokens,
                 u.output_tokens, u.image_tokens, c->in, c->out, c->image);
    json_decref(resp);
    free(body);
}

static void test_provider__parse_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(parse_cases) / sizeof(parse_cases[0]); i++)
        check_parse(&parse_cases[i]);
}

/* Every stop reason maps; generated ids look like the provider's. */
static void test_provider__parse_finish_reasons(void **state)
{
    (void)state;
    static const char *const anth[][2] = {{"end_turn", "stop"},
                                          {"max_tokens", "length"},
                                          {"stop_sequence", "stop"},
                                          {"tool_use", "tool_calls"},
                                          {"refusal", "content_filter"},
                                          {"pause_turn", "stop"},
                                          {"model_context_window_exceeded", "length"}};
    for (size_t i = 0; i < sizeof(anth) / sizeof(anth[0]); i++) {
        char body[256], want[64];
        snprintf(body, sizeof(body),
                 "{\"type\":\"message\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}],"
                 "\"stop_reason\":\"%s\"}",
                 anth[i][0]);
        json_t *resp = NULL;
        ap_error err = {0};
        assert_int_equal(
            ANTHROPIC->parse(&confs[C_ANTHROPIC], 200, body, strlen(body), &resp, NULL, &err),
            AP_OK);
        snprintf(want, sizeof(want), "%s", anth[i][1]);
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(json_object_get(resp, "choices"), 0),
                                              "finish_reason")),
            want);
        /* No id upstream: a fresh "msg_" one. */
        assert_memory_equal(json_string_value(json_object_get(resp, "id")), "msg_", 4);
        json_decref(resp);
    }
    static const char *const gem[][2] = {
        {"STOP", "stop"},
        {"MAX_TOKENS", "length"},
        {"SAFETY", "content_filter"},
        {"RECITATION", "content_filter"},
        {"BLOCKLIST", "content_filter"},
        {"PROHIBITED_CONTENT", "content_filter"},
        {"SPII", "content_filter"},
        {"OTHER", "stop"},
        {"MALFORMED_FUNCTION_CALL", "stop"},
        {"FINISH_REASON_UNSPECIFIED", "stop"},
    };
    for (size_t i = 0; i < sizeof(gem) / sizeof(gem[0]); i++) {
        char body[256];
        snprintf(body, sizeof(body),
                 "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"x\"}]},"
                 "\"finishReason\":\"%s\"}]}",
                 gem[i][0]);
        json_t *resp = NULL;
        ap_error err = {0};
        assert_int_equal(
            GEMINI->parse(&confs[C_GEMINI], 200, body, strlen(body), &resp, NULL, &err), AP_OK);
        assert_string_equal(
            json_string_value(json_object_get(json_array_get(json_object_get(resp, "choices"), 0),
                                              "finish_reason")),
            gem[i][1]);
        assert_memory_equal(json_string_value(json_object_get(resp, "id")), "chatcmpl-", 9);
        json_decref(resp);
    }
}

struct parse_err_case {
    const struct ap__provider_ops *ops;
    long status;
    const char *body; /* table notation */
    ap_status code;
    const char *msg;
};

static const struct parse_err_case parse_err_cases[] = {
    {OPENAI, 401,
     "{'error':{'message':'Incorrect API key provided: " KEY ". You can find your API key at "
     "https://platform.openai.com/account/api-keys.','type':'invalid_request_error','param':null,"
     "'code':'invalid_api_key'}}",
     AP_EUPSTREAM,
     "openai: Incorrect API key provided: [redacted]. You can find your API key at "
     "https://platform.openai.com/account/api-keys."},
    {OPENAI, 429, "{'error':{'message':'Rate limit reached for gpt-4o','type':'requests'}}",
     AP_EUPSTREAM, "openai: Rate limit reached for gpt-4o"},
    {OPENAI, 502, "<html><body>502 Bad Gateway</body></html>\n", AP_EUPSTREAM,
     "openai: <html><body>502 Bad Gateway</body></html>"},
    {OPENAI, 500, "", AP_EUPSTREAM, "openai: http 500 with an empty body"},
    {OPENAI, 503, " \r\n", AP_EUPSTREAM, "openai: http 503 with an empty body"},
    {OPENAI, 404, "{'error':'model \\u0027llava\\u0027 not found, try pulling it first'}",
     AP_EUPSTREAM, "openai: model 'llava' not found, try pulling it first"},
    {OPENAI, 400,
     "{'object':'error','message':'max_tokens is too large','type':'BadRequestError','code':400}",
     AP_EUPSTREAM, "openai: max_tokens is too large"},
    {OPENAI, 400, "line one\nline\ttwo\x01", AP_EUPSTREAM, "openai: line one line two"},
    {OPENAI, 400, "{'error':{'message':'bad\\u0000byte'}}", AP_EUPSTREAM, "openai: bad byte"},
    {OPENAI, 200, "hello", AP_EDECODE, "openai: the response is not json"},
    {OPENAI, 200, "[1,2]", AP_EDECODE, "openai: the response is not a json object"},
    {OPENAI, 200, "{'choices':'x'}", AP_EDECODE, "openai: the response has no choices"},
    {OPENAI, 200, "{'choices':[]}", AP_EDECODE, "openai: the response has no choices"},
    {OPENAI, 200, "{'choices':[{'message':5}]}", AP_EDECODE, "openai: the response has no choices"},
    {OPENAI, 200, "{'error':{'message':'model is loading'}}", AP_EUPSTREAM,
     "openai: model is loading"},
    {ANTHROPIC, 400,
     "{'type':'error','error':{'type':'invalid_request_error','message':'max_tokens: Field "
     "required'},'request_id':'req_1'}",
     AP_EUPSTREAM, "anthropic: max_tokens: Field required"},
    {ANTHROPIC, 529, "{'type':'error','error':{'type':'overloaded_error','message':'Overloaded'}}",
     AP_EUPSTREAM, "anthropic: Overloaded"},
    {ANTHROPIC, 200, "{'type':'error','error':{'type':'api_error','message':'boom'}}", AP_EUPSTREAM,
     "anthropic: boom"},
    {ANTHROPIC, 200, "{'type':'message','content':'x'}", AP_EDECODE,
     "anthropic: the response has no content"},
    {ANTHROPIC, 200, "{'type':'message','content':[", AP_EDECODE,
     "anthropic: the response is not json"},
    {ANTHROPIC, 200, "'str'", AP_EDECODE, "anthropic: the response is not json"},
    {GEMINI, 400,
     "{'error':{'code':400,'message':'API key not valid. Please pass a valid API key.','status':"
     "'INVALID_ARGUMENT'}}",
     AP_EUPSTREAM, "gemini: API key not valid. Please pass a valid API key."},
    {GEMINI, 500, "[{'error':{'code':500,'message':'Internal error','status':'INTERNAL'}}]",
     AP_EUPSTREAM, "gemini: Internal error"},
    {GEMINI, 200, "{}", AP_EDECODE, "gemini: the response has no candidates"},
    {GEMINI, 200, "{'candidates':5}", AP_EDECODE, "gemini: the response has no candidates"},
    {GEMINI, 200, "{'error':{'message':'late'}}", AP_EUPSTREAM, "gemini: late"},
};

static void test_provider__parse_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(parse_err_cases) / sizeof(parse_err_cases[0]); i++) {
        const struct parse_err_case *c = &parse_err_cases[i];
        ap_error err = {0};
        json_t *resp = NULL;
        struct ap__usage u = {-7, -7, -7};
        char *body = unq(c->body);
        ap_status st =
            c->ops->parse(conf_for(c->ops), c->status, body, strlen(body), &resp, &u, &err);
        if (st != c->code || strcmp(err.msg, c->msg) != 0)
            fail_msg("case %zu: got %s \"%s\", want %s \"%s\"", i, ap_strerror(st), err.msg,
                     ap_strerror(c->code), c->msg);
        check_err(c->msg, st, &err);
        assert_null(resp);
        assert_int_equal(u.input_tokens, -7); /* untouched on failure */
        free(body);
    }
}

/* Long and hostile error bodies: capped, cut between characters, the key never shows. */
static void test_provider__error_messages_are_capped_and_redacted(void **state)
{
    (void)state;
    char body[1024];
    ap_error err = {0};
    json_t *resp = NULL;

    /* A raw body: its first 200 characters. */
    memset(body, 'x', 300);
    body[300] = '\0';
    assert_int_equal(OPENAI->parse(&confs[C_OPENAI], 500, body, 300, &resp, NULL, &err),
                     AP_EUPSTREAM);
    assert_int_equal(strlen(err.msg), strlen("openai: ") + 200);

    /* The key straddling the 200-character cut: none of it survives. */
    for (size_t at = 180; at < 205; at++) {
        memset(body, 'y', at);
        snprintf(body + at, sizeof(body) - at, "%s and more", KEY);
        ap_error_clear(&err);
        assert_int_equal(
            OPENAI->parse(&confs[C_OPENAI], 401, body, strlen(body), &resp, NULL, &err),
            AP_EUPSTREAM);
        check_err("straddle", AP_EUPSTREAM, &err);
        assert_null(strstr(err.msg, "sk-"));
    }

    /* A long JSON message in 2-byte characters: cut to fit, still valid UTF-8. */
    size_t n = 0;
    n += (size_t)snprintf(body, sizeof(body), "{\"error\":{\"message\":\"");
    for (int i = 0; i < 300; i++) {
        body[n++] = '\xC3';
        body[n++] = '\xA9';
    }
    n += (size_t)snprintf(body + n, sizeof(body) - n, "\"}}");
    ap_error_clear(&err);
    assert_int_equal(GEMINI->parse(&confs[C_GEMINI], 400, body, n, &resp, NULL, &err),
                     AP_EUPSTREAM);
    check_err("long utf-8", AP_EUPSTREAM, &err);
    assert_true(strlen(err.msg) < AP_ERROR_MSG_MAX);
    assert_true(strlen(err.msg) > 200);

    /* Bytes that are not UTF-8 in a raw body become '?'. */
    static const char bad[] = "oops \xff\xfe \xC3 end";
    ap_error_clear(&err);
    assert_int_equal(
        ANTHROPIC->parse(&confs[C_ANTHROPIC], 500, bad, sizeof(bad) - 1, &resp, NULL, &err),
        AP_EUPSTREAM);
    assert_string_equal(err.msg, "anthropic: oops ?? ? end");
}

/* ---- streams ------------------------------------------------------------------------------- */

struct collect {
    json_t *chunks;
};

static void collect_chunk(void *ctx, const json_t *chunk)
{
    struct collect *c = ctx;
    json_array_append_new(c->chunks, json_deep_copy(chunk));
}

enum split { SPLIT_WHOLE, SPLIT_BYTES, SPLIT_RANDOM };

/* A small deterministic generator, so a failing split can be replayed. */
static uint32_t rnd(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

struct stream_run {
    json_t *chunks;
    struct ap__usage usage;
    bool done;
    ap_status st;
    ap_error err;
    size_t feeds_after_fail_ok; /* feeds that succeeded after a failure (must stay 0) */
};

static void run_stream(const struct ap__provider_ops *ops, const char *model, const char *text,
                       size_t len, enum split mode, uint32_t seed, bool eof, struct stream_run *out)
{
    struct collect col = {json_array()};
    struct ap__stream *s = ops->stream_new(conf_for(ops), model, collect_chunk, &col);
    assert_non_null(s);
    memset(out, 0, sizeof(*out));
    out->usage = (struct ap__usage){-1, -1, -1};
    size_t off = 0;
    while (off < len && out->st == AP_OK) {
        size_t n = mode == SPLIT_WHOLE   ? len - off
                   : mode == SPLIT_BYTES ? 1
                                         : 1 + rnd(&seed) % (rnd(&seed) % 4 ? 24 : 400);
        if (n > len - off)
            n = len - off;
        out->st = ops->stream_feed(s, text + off, n, &out->done, &out->usage, &out->err);
        off += n;
    }
    if (eof && out->st == AP_OK)
        out->st = ops->stream_feed(s, NULL, 0, &out->done, &out->usage, &out->err);
    if (out->st != AP_OK) {
        ap_error again = {0};
        if (ops->stream_feed(s, "data: {}\n\n", 10, NULL, NULL, &again) != out->st)
            out->feeds_after_fail_ok++;
    }
    ops->stream_free(s);
    out->chunks = col.chunks;
}

/* Line ends rewritten: 0 LF (as written), 1 CRLF, 2 CR. */
static char *relines(const char *text, int style, size_t *len)
{
    size_t n = strlen(text);
    char *d = malloc(2 * n + 1), *p = d;
    assert_non_null(d);
    for (size_t i = 0; i < n; i++) {
        if (text[i] == '\n' && style == 1)
            *p++ = '\r', *p++ = '\n';
        else if (text[i] == '\n' && style == 2)
            *p++ = '\r';
        else
            *p++ = text[i] == '\'' ? '"' : text[i];
    }
    *p = '\0';
    *len = (size_t)(p - d);
    return d;
}

struct stream_case {
    const char *name;
    const struct ap__provider_ops *ops;
    const char *sse;    /* table notation; LF line ends */
    bool eof;           /* report the end of the body after the bytes */
    const char *expect; /* the chunks, a JSON array */
    long in, out;
    bool done;
    ap_status code;
    const char *msg;
};

#define OC(delta, fin)                                                                             \
    "{'id':'c1','object':'chat.completion.chunk','created':1,'model':'gpt-4o','choices':[{"        \
    "'index':0,'delta':" delta ",'finish_reason':" fin "}]}"
#define OC_USAGE                                                                                   \
    "{'id':'c1','object':'chat.completion.chunk','created':1,'model':'gpt-4o','choices':[],"       \
    "'usage':{'prompt_tokens':20,'completion_tokens':2,'total_tokens':22}}"
#define AC(delta, fin)                                                                             \
    "{'id':'msg_1nZ','object':'chat.completion.chunk','created':'<int>','model':'claude-sonnet-"   \
    "4-5','choices':[{'index':0,'delta':" delta ",'finish_reason':" fin "}]}"
#define AC_USAGE(in, out, total)                                                                   \
    "{'id':'msg_1nZ','object':'chat.completion.chunk','created':'<int>','model':'claude-sonnet-"   \
    "4-5','choices':[],'usage':{'prompt_tokens':" in ",'completion_tokens':" out                   \
    ",'total_tokens':" total "}}"
#define ANTH_START                                                                                 \
    "event: message_start\ndata: {'type':'message_start','message':{'id':'msg_1nZ','type':"        \
    "'message','role':'assistant','content':[],'model':'claude-sonnet-4-5','stop_reason':null,"    \
    "'stop_sequence':null,'usage':{'input_tokens':25,'cache_read_input_tokens':5,"                 \
    "'output_tokens':1}}}\n\n"
#define ANTH_TEXT(t)                                                                               \
    "event: content_block_delta\ndata: {'type':'content_block_delta','index':0,'delta':{'type':"   \
    "'text_delta','text':'" t "'}}\n\n"
#define GC(delta, fin)                                                                             \
    "{'id':'r1','object':'chat.completion.chunk','created':'<int>','model':'gemini-2.0-flash',"    \
    "'choices':[{'index':0,'delta':" delta ",'finish_reason':" fin "}]}"
#define GEM_EV(parts, extra)                                                                       \
    "data: {'candidates':[{'content':{'parts':" parts ",'role':'model'},'index':0" extra "}],"     \
    "'usageMetadata':{'promptTokenCount':12,'candidatesTokenCount':3,'totalTokenCount':15},"       \
    "'modelVersion':'gemini-2.0-flash','responseId':'r1'}\n\n"
#define ROLE "{'role':'assistant','content':''}"

static const struct stream_case stream_cases[] = {
    {"openai: comments, multi-line data, fields, [DONE], trailing bytes ignored", OPENAI,
     "\xEF\xBB\xBF: keep-alive\n\n"
     "data: " OC(ROLE,
                 "null") "\n\n"
                         "data:" OC(
                             "{'content':'Hel'}",
                             "null") "\n\n"
                                     "data: {'id':'c1','object':'chat.completion.chunk',\n"
                                     "data: "
                                     "'created':1,'model':'gpt-4o','choices':[{'index':0,'delta':{'"
                                     "content':'lo'},"
                                     "'finish_reason':null}]}\n\n"
                                     "data: " OC(
                                         "{}",
                                         "'stop'") "\n\n"
                                                   "event: message\nid: 7\nretry: 100\nunknown: x\n"
                                                   "data: " OC_USAGE "\n\n"
                                                   "data: [DONE]\n\n"
                                                   "data: {not json}\n\n",
     false,
     "[" OC(ROLE, "null") "," OC("{'content':'Hel'}", "null") "," OC(
         "{'content':'lo'}", "null") "," OC("{}", "'stop'") "," OC_USAGE "]",
     20, 2, true, AP_OK, NULL},
    {"openai: [DONE] without its blank line, then the end", OPENAI,
     "data: " OC("{}", "'stop'") "\n\ndata: [DONE]\n", true, "[" OC("{}", "'stop'") "]", -1, -1,
     true, AP_OK, NULL},
    {"openai: no [DONE] but finished", OPENAI, "data: " OC("{}", "'length'") "\n\n", true,
     "[" OC("{}", "'length'") "]", -1, -1, true, AP_OK, NULL},
    {"openai: not done before the end", OPENAI, "data: " OC(ROLE, "null") "\n\n", false,
     "[" OC(ROLE, "null") "]", -1, -1, false, AP_OK, NULL},
    {"openai: cut off", OPENAI, "data: " OC(ROLE, "null") "\n\ndata: {'id'", true,
     "[" OC(ROLE, "null") "]", -1, -1, false, AP_ENETWORK,
     "openai: the stream ended before it finished"},
    {"openai: error chunk", OPENAI,
     "data: " OC(ROLE, "null") "\n\ndata: {'error':{'message':'server overloaded','type':"
                               "'server_error'}}\n\n",
     false, "[" OC(ROLE, "null") "]", -1, -1, false, AP_EUPSTREAM, "openai: server overloaded"},
    {"openai: error event with text", OPENAI, "event: error\ndata: upstream went away\n\n", false,
     "[]", -1, -1, false, AP_EUPSTREAM, "openai: upstream went away"},
    {"openai: bad json", OPENAI, "data: {nope\n\n", false, "[]", -1, -1, false, AP_EDECODE,
     "openai: stream event is not a json object"},
    {"openai: json that is not an object", OPENAI, "data: [1]\n\n", false, "[]", -1, -1, false,
     AP_EDECODE, "openai: stream event is not a json object"},

    {"anthropic: the documented sequence", ANTHROPIC,
     ANTH_START
     "event: content_block_start\ndata: {'type':'content_block_start','index':0,"
     "'content_block':{'type':'thinking','thinking':''}}\n\n"
     "event: content_block_delta\ndata: {'type':'content_block_delta','index':0,'delta':{'type':"
     "'thinking_delta','thinking':'Let me see'}}\n\n"
     "event: content_block_delta\ndata: {'type':'content_block_delta','index':0,'delta':{'type':"
     "'signature_delta','signature':'EqQB'}}\n\n"
     "event: content_block_stop\ndata: {'type':'content_block_stop','index':0}\n\n"
     "event: content_block_start\ndata: {'type':'content_block_start','index':1,"
     "'content_block':{'type':'text','text':''}}\n\n"
     "event: ping\ndata: {'type': 'ping'}\n\n" ANTH_TEXT("Hello") ANTH_TEXT(
         "!") "event: content_block_stop\ndata: {'type':'content_block_stop','index':1}\n\n"
              "event: future_event\ndata: {'type':'future_event','x':1}\n\n"
              "event: message_delta\ndata: "
              "{'type':'message_delta','delta':{'stop_reason':'end_turn',"
              "'stop_sequence':null},'usage':{'output_tokens':15}}\n\n"
              "event: message_stop\ndata: {'type':'message_stop'}\n\n",
     false,
     "[" AC(ROLE, "null") "," AC("{'content':'Hello'}", "null") "," AC(
         "{'content':'!'}", "null") "," AC("{}", "'stop'") "," AC_USAGE("30", "15", "45") "]",
     30, 15, true, AP_OK, NULL},
    {"anthropic: max_tokens, text in content_block_start", ANTHROPIC,
     ANTH_START
     "event: content_block_start\ndata: {'type':'content_block_start','index':0,"
     "'content_block':{'type':'text','text':'Hi'}}\n\n"
     "event: message_delta\ndata: {'type':'message_delta','delta':{'stop_reason':'max_tokens'},"
     "'usage':{'input_tokens':40,'output_tokens':1}}\n\n"
     "event: message_stop\ndata: {'type':'message_stop'}\n\n",
     false,
     "[" AC(ROLE, "null") "," AC("{'content':'Hi'}",
                                 "null") "," AC("{}", "'length'") "," AC_USAGE("40", "1", "41") "]",
     40, 1, true, AP_OK, NULL},
    {"anthropic: the end after message_delta", ANTHROPIC,
     ANTH_START "event: message_delta\ndata: {'type':'message_delta','delta':{'stop_reason':"
                "'refusal'},'usage':{'output_tokens':2}}\n\n",
     true, "[" AC(ROLE, "null") "," AC("{}", "'content_filter'") "," AC_USAGE("30", "2", "32") "]",
     30, 2, true, AP_OK, NULL},
    {"anthropic: cut off", ANTHROPIC, ANTH_START ANTH_TEXT("Hel"), true,
     "[" AC(ROLE, "null") "," AC("{'content':'Hel'}", "null") "]", -1, -1, false, AP_ENETWORK,
     "anthropic: the stream ended before it finished"},
    {"anthropic: error event", ANTHROPIC,
     ANTH_START "event: error\ndata: {'type':'error','error':{'type':'overloaded_error',"
                "'message':'Overloaded'}}\n\n",
     false, "[" AC(ROLE, "null") "]", -1, -1, false, AP_EUPSTREAM, "anthropic: Overloaded"},
    {"anthropic: bad json", ANTHROPIC, "event: message_start\ndata: {\n\n", false, "[]", -1, -1,
     false, AP_EDECODE, "anthropic: stream event is not a json object"},

    {"gemini: text, finish, usage", GEMINI,
     GEM_EV("[{'text':'The '}]", "") ": comment\n\n" GEM_EV("[{'text':'x','thought':true},{'text':"
                                                            "'cat.'}]",
                                                            ",'finishReason':'STOP'"),
     false,
     "[" GC(ROLE, "null") "," GC("{'content':'The '}", "null") "," GC(
         "{'content':'cat.'}",
         "null") "," GC("{}", "'stop'") ",{'id':'r1','object':'chat.completion.chunk','created':'<"
                                        "int>','model':'gemini-2.0-flash',"
                                        "'choices':[],'usage':{'prompt_tokens':12,'completion_"
                                        "tokens':3,'total_tokens':15}}]",
     12, 3, true, AP_OK, NULL},
    {"gemini: safety", GEMINI, GEM_EV("[]", ",'finishReason':'SAFETY'"), false,
     "[" GC(ROLE, "null") "," GC("{}",
                                 "'content_filter'") ",{'id':'r1','object':'chat.completion.chunk',"
                                                     "'created':'<int>','model':'gemini-2.0-flash',"
                                                     "'choices':[],'usage':{'prompt_tokens':12,'"
                                                     "completion_tokens':3,'total_tokens':15}}]",
     12, 3, true, AP_OK, NULL},
    {"gemini: blocked prompt", GEMINI,
     "data: {'promptFeedback':{'blockReason':'PROHIBITED_CONTENT'},'usageMetadata':{"
     "'promptTokenCount':7},'modelVersion':'gemini-2.0-flash','responseId':'r1'}\n\n",
     false,
     "[" GC(ROLE, "null") "," GC("{}",
                                 "'content_filter'") ",{'id':'r1','object':'chat.completion.chunk',"
                                                     "'created':'<int>','model':'gemini-2.0-flash',"
                                                     "'choices':[],'usage':{'prompt_tokens':7,'"
                                                     "completion_tokens':0,'total_tokens':7}}]",
     7, -1, true, AP_OK, NULL},
    {"gemini: error event", GEMINI,
     GEM_EV("[{'text':'a'}]", "") "data: {'error':{'code':500,'message':'Internal error',"
                                  "'status':'INTERNAL'}}\n\n",
     false, "[" GC(ROLE, "null") "," GC("{'content':'a'}", "null") "]", -1, -1, false, AP_EUPSTREAM,
     "gemini: Internal error"},
    {"gemini: cut off", GEMINI, GEM_EV("[{'text':'a'}]", ""), true,
     "[" GC(ROLE, "null") "," GC("{'content':'a'}", "null") "]", -1, -1, false, AP_ENETWORK,
     "gemini: the stream ended before it finished"},
};

static void check_stream_case(const struct stream_case *c)
{
    for (int style = 0; style < 3; style++) {
        size_t len;
        char *text = relines(c->sse, style, &len);
        for (int mode = 0; mode < 22; mode++) {
            struct stream_run r;
            enum split sp = mode == 0 ? SPLIT_WHOLE : mode == 1 ? SPLIT_BYTES : SPLIT_RANDOM;
            char what[256];
            snprintf(what, sizeof(what), "%s [lines %d, split %d]", c->name, style, mode);
            run_stream(c->ops, "client-model", text, len, sp, 0x9E3779B9u * (uint32_t)(mode + 1),
                       c->eof, &r);
            if (r.st != c->code || (c->msg && strcmp(r.err.msg, c->msg) != 0))
                fail_msg("%s: got %s \"%s\", want %s \"%s\"", what, ap_strerror(r.st), r.err.msg,
                         ap_strerror(c->code), c->msg ? c->msg : "");
            check_err(what, r.st, &r.err);
            assert_int_equal(r.feeds_after_fail_ok, 0);
            assert_json(what, c->expect, r.chunks);
            if (c->code == AP_OK) {
                if (r.done != c->done || r.usage.input_tokens != c->in ||
                    r.usage.output_tokens != c->out)
                    fail_msg("%s: done %d usage %ld/%ld, want %d %ld/%ld", what, r.done,
                             r.usage.input_tokens, r.usage.output_tokens, c->done, c->in, c->out);
            }
            json_decref(r.chunks);
        }
        free(text);
    }
}

static void test_provider__stream_cases(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(stream_cases) / sizeof(stream_cases[0]); i++)
        check_stream_case(&stream_cases[i]);
}

/* Without an upstream id or model the chunks carry a fresh id and the caller's model. */
static void test_provider__stream_defaults(void **state)
{
    (void)state;
    static const char sse[] = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"a\"}]},"
                              "\"finishReason\":\"STOP\"}]}\n\n";
    struct stream_run r;
    run_stream(GEMINI, "my-gemini", sse, sizeof(sse) - 1, SPLIT_WHOLE, 1, false, &r);
    assert_int_equal(r.st, AP_OK);
    assert_true(r.done);
    assert_int_equal(json_array_size(r.chunks), 4);
    for (size_t i = 0; i < 4; i++) {
        const json_t *c = json_array_get(r.chunks, i);
        assert_string_equal(json_string_value(json_object_get(c, "model")), "my-gemini");
        assert_memory_equal(json_string_value(json_object_get(c, "id")), "chatcmpl-", 9);
        assert_int_equal(strlen(json_string_value(json_object_get(c, "id"))), 9 + 24);
    }
    json_decref(r.chunks);
}

/* ---- the SSE parser itself ------------------------------------------------------------------ */

static ap_status sse_collect(void *ctx, const char *event, const char *data, size_t len,
                             ap_error *err)
{
    (void)err;
    struct ap__wire_buf *b = ctx;
    assert_int_equal(strlen(data), len);
    if (ap__wire_buf_adds(b, event) || ap__wire_buf_adds(b, "|") ||
        ap__wire_buf_add(b, data, len) || ap__wire_buf_adds(b, "#"))
        return AP_ENOMEM;
    return AP_OK;
}

static void test_provider__sse_parser(void **state)
{
    (void)state;
    static const char in[] = "\xEF\xBB\xBF: comment\ndata: a\ndata:b\ndata\n\n"
                             "event: x\ndata: 1\r\n\r\n"
                             "id: 5\nretry: 3\ndata:  two spaces\n\n"
                             "event: lonely\n\n"
                             "data: last\r\r"
                             "foo: bar\ndata: cr\r\r"
                             "event: a-very-long-event-name-that-goes-past-the-buffer-we-keep-"
                             "for-names-and-more\ndata: z\n\n"
                             "data: unfinished";
    static const char want[] = "message|a\nb\n#x|1#message| two spaces#message|last#message|cr#"
                               "a-very-long-event-name-that-goes-past-the-buffer-we-keep-for-na|z#";
    for (int mode = 0; mode < 30; mode++) {
        struct ap__wire_sse s;
        struct ap__wire_buf got = {0};
        uint32_t seed = 77u + (uint32_t)mode;
        ap__wire_sse_init(&s);
        size_t off = 0, len = sizeof(in) - 1;
        while (off < len) {
            size_t n = mode == 0 ? len : mode == 1 ? 1 : 1 + rnd(&seed) % 9;
            if (n > len - off)
                n = len - off;
            assert_int_equal(ap__wire_sse_feed(&s, in + off, n, sse_collect, &got, NULL), AP_OK);
            off += n;
        }
        assert_non_null(got.p);
        assert_string_equal(got.p, want);
        ap__wire_buf_release(&got);
        ap__wire_sse_release(&s);
    }
}

static void test_provider__sse_limits(void **state)
{
    (void)state;
    size_t n = AP__WIRE_MAX_EVENT_BYTES + 10;
    char *big = malloc(n);
    assert_non_null(big);
    memset(big, 'a', n);
    memcpy(big, "data: ", 6);
    struct ap__wire_sse s;
    struct ap__wire_buf got = {0};
    ap_error err = {0};
    ap__wire_sse_init(&s);
    assert_int_equal(ap__wire_sse_feed(&s, big, n, sse_collect, &got, &err), AP_ETOOLARGE);
    assert_string_equal(err.msg, "sse: line over 16777216 bytes");
    ap__wire_sse_release(&s);

    /* Many data lines that add up past the limit. */
    ap__wire_sse_init(&s);
    ap_error_clear(&err);
    for (size_t i = 0; i < n; i += 1024)
        big[i] = '\n', memcpy(big + i + 1, "data: ", 6);
    assert_int_equal(ap__wire_sse_feed(&s, big, n, sse_collect, &got, &err), AP_OK);
    ap_status st = ap__wire_sse_feed(&s, big, n, sse_collect, &got, &err);
    assert_int_equal(st, AP_ETOOLARGE);
    assert_null(got.p); /* nothing was dispatched */
    assert_string_equal(err.msg, "sse: event data over 16777216 bytes");
    ap__wire_sse_release(&s);
    ap__wire_buf_release(&got);
    free(big);
}

/* ---- the Anthropic front end ---------------------------------------------------------------- */

static void test_provider__anthropic_req_to_canon(void **state)
{
    (void)state;
    json_t *in = J("{'model':'claude-sonnet-4-5','max_tokens':1024,'system':[{'type':'text',"
                   "'text':'Be terse.','cache_control':{'type':'ephemeral'}}],'messages':[{"
                   "'role':'user','content':[{'type':'image','source':{'type':'base64',"
                   "'media_type':'image/png','data':'iVBORw0KGgo='}},{'type':'image','source':{"
                   "'type':'url','url':'https://example.com/x.jpg'}},{'type':'text','text':'What "
                   "is this?'}]},{'role':'assistant','content':[{'type':'thinking','thinking':"
                   "'...','signature':'s'},{'type':'text','text':'A chart.'}]},{'role':'user',"
                   "'content':'Sure?'}],'stop_sequences':['###'],'temperature':0.3,'top_p':0.8,"
                   "'top_k':5,'stream':true,'metadata':{'user_id':'u1'},'tools':[]}");
    json_t *canon = NULL;
    ap_error err = {0};
    assert_int_equal(ap__anthropic_req_to_canon(in, &canon, &err), AP_OK);
    assert_json("req_to_canon",
                "{'model':'claude-sonnet-4-5','messages':[{'role':'system',"
                "'content':[{'type':'text','text':'Be terse.'}]},{'role':'user','content':[{"
                "'type':'image_url','image_url':{'url':'data:image/png;base64,iVBORw0KGgo='}},{"
                "'type':'image_url','image_url':{'url':'https://example.com/x.jpg'}},{'type':"
                "'text','text':'What is this?'}]},{'role':'assistant','content':[{'type':'text',"
                "'text':'A chart.'}]},{'role':'user','content':'Sure?'}],'max_tokens':1024,"
                "'temperature':0.3,'top_p':0.8,'stop':['###'],'stream':true,'stream_options':{"
                "'include_usage':true}}",
                canon);
    json_decref(canon);
    json_decref(in);

    /* A plain string system, no stream, no model. */
    in = J("{'system':'S','messages':[{'role':'user','content':'hi'}],'stream':false}");
    assert_int_equal(ap__anthropic_req_to_canon(in, &canon, &err), AP_OK);
    assert_json("req_to_canon 2",
                "{'messages':[{'role':'system','content':'S'},{'role':'user','content':'hi'}],"
                "'stream':false}",
                canon);
    json_decref(canon);
    json_decref(in);
}

static void test_provider__anthropic_req_to_canon_errors(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"[]", "the request is not a json object"},
        {"{}", "\"messages\" must be a non-empty array"},
        {"{'messages':[]}", "\"messages\" must be a non-empty array"},
        {"{'messages':[{'role':'user','content':'x'}],'tools':[{'name':'f'}]}",
         "tools are not supported yet"},
        {"{'messages':[{'role':'user','content':[{'type':'tool_result','tool_use_id':'t'}]}]}",
         "tools are not supported yet"},
        {"{'messages':[{'role':'user','content':[{'type':'document','source':{}}]}]}",
         "messages[0].content[0].type is not supported (text and image are)"},
        {"{'messages':[{'role':'user','content':[{'type':'image','source':{'type':'file',"
         "'file_id':'f'}}]}]}",
         "messages[0].content[0].source.type is not supported (base64 and url are)"},
        {"{'messages':[{'role':'user','content':[{'type':'image','source':{'type':'base64',"
         "'data':'x'}}]}]}",
         "messages[0].content[0].source needs media_type and data strings"},
        {"{'messages':[{'role':'user','content':[{'type':'image','source':{'type':'url'}}]}]}",
         "messages[0].content[0].source.url must be a string"},
        {"{'messages':[{'role':'user','content':[{'type':'text','text':3}]}]}",
         "messages[0].content[0].text must be a string"},
        {"{'messages':[{'role':'user','content':[7]}]}",
         "messages[0].content[0] must be an object with a type"},
        {"{'messages':[{'role':'system','content':'x'}]}",
         "messages[0].role must be user or assistant"},
        {"{'messages':[{'role':'user','content':null}]}",
         "messages[0].content must be a string or an array"},
        {"{'model':5,'messages':[{'role':'user','content':'x'}]}", "\"model\" must be a string"},
        {"{'messages':[{'role':'user','content':'x'}],'max_tokens':-1}",
         "\"max_tokens\" must be a positive integer"},
        {"{'messages':[{'role':'user','content':'x'}],'temperature':'1'}",
         "\"temperature\" must be a number"},
        {"{'messages':[{'role':'user','content':'x'}],'stream':'yes'}",
         "\"stream\" must be a boolean"},
        {"{'messages':[{'role':'user','content':'x'}],'system':5}",
         "\"system\" must be a string or an array of text blocks"},
        {"{'messages':[{'role':'user','content':'x'}],'system':[{'type':'image'}]}",
         "system[0] must be a text block"},
        {"{'messages':[{'role':'user','content':'x'}],'stop_sequences':'x'}",
         "\"stop_sequences\" must be an array of strings"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *in = J(cases[i][0]), *canon = NULL;
        ap_error err = {0};
        ap_status st = ap__anthropic_req_to_canon(in, &canon, &err);
        if (st != AP_EINVAL || strcmp(err.msg, cases[i][1]) != 0)
            fail_msg("case %zu: got %s \"%s\", want \"%s\"", i, ap_strerror(st), err.msg,
                     cases[i][1]);
        assert_null(canon);
        json_decref(in);
    }
}

/* A Messages request in the subset both directions cover comes back as it was. */
static void test_provider__anthropic_request_round_trip(void **state)
{
    (void)state;
    static const char *const reqs[] = {
        "{'model':'claude-opus-4-1','max_tokens':300,'system':'You read invoices.','messages':[{"
        "'role':'user','content':[{'type':'text','text':'Total?'},{'type':'image','source':{"
        "'type':'base64','media_type':'image/jpeg','data':'/9j/4AAQSkZJRg=='}},{'type':'image',"
        "'source':{'type':'url','url':'https://example.com/i.png'}}]},{'role':'assistant',"
        "'content':'It is'},{'role':'user','content':'Go on'}],'temperature':0.2,'top_p':0.5,"
        "'stop_sequences':['\\n\\n','END'],'stream':true}",
        "{'model':'claude-haiku','max_tokens':1,'messages':[{'role':'user','content':'x'}]}",
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        json_t *in = J(reqs[i]), *canon = NULL;
        ap_error err = {0};
        struct ap__upreq r = {0};
        assert_int_equal(ap__anthropic_req_to_canon(in, &canon, &err), AP_OK);
        bool stream = json_is_true(json_object_get(canon, "stream"));
        assert_int_equal(ANTHROPIC->build(&confs[C_ANTHROPIC],
                                          json_string_value(json_object_get(in, "model")), canon,
                                          stream, &r, &err),
                         AP_OK);
        json_t *body = json_loadb(r.body, r.body_len, 0, NULL);
        char *want = dump(in), *got = dump(body);
        if (!json_equal(in, body))
            fail_msg("round trip %zu:\nwant %s\ngot  %s", i, want, got);
        free(want);
        free(got);
        json_decref(body);
        json_decref(canon);
        json_decref(in);
        ap__upreq_release(&r);
    }
}

static void test_provider__canon_resp_to_anthropic(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"{'id':'chatcmpl-9xYz','object':'chat.completion','created':1,'model':'gpt-4o',"
         "'choices':[{'index':0,'message':{'role':'assistant','content':'A red bicycle.'},"
         "'finish_reason':'length'}],'usage':{'prompt_tokens':10,'completion_tokens':4,"
         "'total_tokens':14}}",
         "{'id':'msg_9xYz','type':'message','role':'assistant','model':'gpt-4o','content':[{"
         "'type':'text','text':'A red bicycle.'}],'stop_reason':'max_tokens','stop_sequence':null,"
         "'usage':{'input_tokens':10,'output_tokens':4}}"},
        {"{'id':'msg_keep','model':'m','choices':[{'message':{'content':[{'type':'text','text':"
         "'a'},{'type':'text','text':'b'}]},'finish_reason':'content_filter'}]}",
         "{'id':'msg_keep','type':'message','role':'assistant','model':'m','content':[{'type':"
         "'text','text':'ab'}],'stop_reason':'refusal','stop_sequence':null,'usage':{"
         "'input_tokens':0,'output_tokens':0}}"},
        {"{'choices':[{'message':{'content':null},'finish_reason':'tool_calls'}]}",
         "{'id':'<str>','type':'message','role':'assistant','model':'','content':[],"
         "'stop_reason':'tool_use','stop_sequence':null,'usage':{'input_tokens':0,"
         "'output_tokens':0}}"},
        {"{'id':'gen-1','choices':[{'message':{'content':''},'finish_reason':null}]}",
         "{'id':'msg_gen-1','type':'message','role':'assistant','model':'','content':[],"
         "'stop_reason':'end_turn','stop_sequence':null,'usage':{'input_tokens':0,"
         "'output_tokens':0}}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *canon = J(cases[i][0]);
        json_t *a = ap__canon_resp_to_anthropic(canon);
        assert_non_null(a);
        assert_json("canon_resp_to_anthropic", cases[i][1], a);
        json_decref(a);
        json_decref(canon);
    }
    static const char *const bad[] = {"[]", "{}", "{'choices':[]}", "{'choices':[{}]}",
                                      "{'choices':5}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *canon = J(bad[i]);
        assert_null(ap__canon_resp_to_anthropic(canon));
        json_decref(canon);
    }
    assert_null(ap__canon_resp_to_anthropic(NULL));

    /* Anthropic response -> canonical -> Anthropic response keeps what matters. */
    char *body = unq(ANTH_RESP);
    json_t *resp = NULL;
    ap_error err = {0};
    assert_int_equal(
        ANTHROPIC->parse(&confs[C_ANTHROPIC], 200, body, strlen(body), &resp, NULL, &err), AP_OK);
    json_t *back = ap__canon_resp_to_anthropic(resp);
    assert_json("response round trip",
                "{'id':'msg_01XFD','type':'message','role':'assistant','model':'claude-sonnet-4-5-"
                "20250929','content':[{'type':'text','text':'A red bicycle.'}],'stop_reason':"
                "'end_turn','stop_sequence':null,'usage':{'input_tokens':1320,'output_tokens':12}}",
                back);
    json_decref(back);
    json_decref(resp);
    free(body);
}

#define CC(delta, fin)                                                                             \
    "{'id':'chatcmpl-abc','object':'chat.completion.chunk','created':1,'model':'gpt-4o',"          \
    "'choices':[{'index':0,'delta':" delta ",'finish_reason':" fin "}]}"

/* Write the events for a list of canonical chunks (plus the end). */
static char *write_sse(const char *model, const char *chunks_json)
{
    json_t *chunks = J(chunks_json);
    struct ap__anth_sse *w = ap__anth_sse_new(model);
    struct ap__wire_buf all = {0};
    assert_non_null(w);
    for (size_t i = 0; i <= json_array_size(chunks); i++) {
        char *out = NULL;
        size_t len = 99;
        const json_t *c = i < json_array_size(chunks) ? json_array_get(chunks, i) : NULL;
        assert_int_equal(ap__anth_sse_chunk(w, c, &out, &len), AP_OK);
        assert_non_null(out);
        assert_int_equal(strlen(out), len);
        assert_int_equal(ap__wire_buf_add(&all, out, len), AP_OK);
        free(out);
    }
    /* After the end nothing more is written. */
    char *out = NULL;
    size_t len = 99;
    assert_int_equal(ap__anth_sse_chunk(w, json_array_get(chunks, 0), &out, &len), AP_OK);
    assert_int_equal(len, 0);
    assert_string_equal(out, "");
    free(out);
    ap__anth_sse_free(w);
    json_decref(chunks);
    return ap__wire_buf_take(&all, NULL);
}

static void test_provider__anthropic_sse_writer(void **state)
{
    (void)state;
    char *got = write_sse(
        "claude-proxy",
        "[" CC(ROLE, "null") "," CC("{'content':'Hi'}", "null") "," CC(
            "{'content':' there'}",
            "null") "," CC("{}",
                           "'stop'") ",{'id':'chatcmpl-abc','object':'chat.completion.chunk','"
                                     "created':1,"
                                     "'model':'gpt-4o','choices':[],'usage':{'prompt_tokens':9,"
                                     "'completion_tokens':2,'total_tokens':11}}]");
    assert_string_equal(
        got,
        "event: message_start\n"
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_abc\",\"type\":\"message\","
        "\"role\":\"assistant\",\"model\":\"claude-proxy\",\"content\":[],\"stop_reason\":null,"
        "\"stop_sequence\":null,\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}\n\n"
        "event: ping\ndata: {\"type\":\"ping\"}\n\n"
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
        "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n"
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
        "\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n\n"
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
        "\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":2,\"input_tokens\":9}}"
        "\n\n"
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");

    /* Fed back through the Anthropic stream translator: the same text, reason and usage. */
    struct stream_run r;
    run_stream(ANTHROPIC, "x", got, strlen(got), SPLIT_BYTES, 1, false, &r);
    assert_int_equal(r.st, AP_OK);
    assert_true(r.done);
    assert_json("writer -> parser",
                "[{'id':'msg_abc','object':'chat.completion.chunk','created':'<int>','model':"
                "'claude-proxy','choices':[{'index':0,'delta':" ROLE ",'finish_reason':null}]},"
                "{'id':'msg_abc','object':'chat.completion.chunk','created':'<int>','model':"
                "'claude-proxy','choices':[{'index':0,'delta':{'content':'Hi'},'finish_reason':"
                "null}]},{'id':'msg_abc','object':'chat.completion.chunk','created':'<int>',"
                "'model':'claude-proxy','choices':[{'index':0,'delta':{'content':' there'},"
                "'finish_reason':null}]},{'id':'msg_abc','object':'chat.completion.chunk',"
                "'created':'<int>','model':'claude-proxy','choices':[{'index':0,'delta':{},"
                "'finish_reason':'stop'}]},{'id':'msg_abc','object':'chat.completion.chunk',"
                "'created':'<int>','model':'claude-proxy','choices':[],'usage':{'prompt_tokens':9,"
                "'completion_tokens':2,'total_tokens':11}}]",
                r.chunks);
    json_decref(r.chunks);
    free(got);

    /* No chunks at all, and no usage: a complete, empty message. */
    got = write_sse(NULL, "[]");
    assert_non_null(strstr(got, "event: message_start\n"));
    assert_non_null(strstr(got, "\"stop_reason\":\"end_turn\""));
    assert_non_null(strstr(got, "\"usage\":{\"output_tokens\":0}}"));
    assert_null(strstr(got, "content_block"));
    assert_non_null(strstr(got, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
    free(got);

    /* The model falls back to the chunk's; length maps to max_tokens. */
    got = write_sse(NULL, "[" CC("{'content':'x'}", "'length'") "]");
    assert_non_null(strstr(got, "\"model\":\"gpt-4o\""));
    assert_non_null(strstr(got, "\"stop_reason\":\"max_tokens\""));
    free(got);

    /* An error event ends the writer. */
    struct ap__anth_sse *w = ap__anth_sse_new("m");
    char *out = NULL;
    size_t len = 0;
    assert_int_equal(ap__anth_sse_error(w, "overloaded_error", "Overloaded", &out, &len), AP_OK);
    assert_string_equal(out, "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":"
                             "\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n");
    free(out);
    assert_int_equal(ap__anth_sse_chunk(w, NULL, &out, &len), AP_OK);
    assert_int_equal(len, 0);
    free(out);
    json_t *notobj = json_integer(3);
    ap__anth_sse_free(w);
    w = ap__anth_sse_new("m");
    assert_int_equal(ap__anth_sse_chunk(w, notobj, &out, &len), AP_EINVAL);
    json_decref(notobj);
    ap__anth_sse_free(w);
    ap__anth_sse_free(NULL);
}

/* A Gemini stream, served to an Anthropic client: text, reason and usage arrive intact. */
static void test_provider__gemini_stream_to_anthropic_client(void **state)
{
    (void)state;
    size_t len, k = 0;
    while (strcmp(stream_cases[k].name, "gemini: text, finish, usage") != 0)
        k++;
    char *sse = relines(stream_cases[k].sse, 1, &len);
    struct stream_run r;
    run_stream(GEMINI, "gemini-2.0-flash", sse, len, SPLIT_RANDOM, 5, true, &r);
    assert_int_equal(r.st, AP_OK);
    char *chunks = dump(r.chunks);
    for (char *p = chunks; *p; p++)
        if (*p == '"')
            *p = '\'';
    char *events = write_sse("gemini-2.0-flash", chunks);
    struct stream_run back;
    run_stream(ANTHROPIC, "x", events, strlen(events), SPLIT_RANDOM, 9, true, &back);
    assert_int_equal(back.st, AP_OK);
    assert_true(back.done);
    assert_int_equal(back.usage.input_tokens, 12);
    assert_int_equal(back.usage.output_tokens, 3);
    assert_json("gemini -> anthropic -> canonical",
                "[{'id':'msg_r1','object':'chat.completion.chunk','created':'<int>','model':"
                "'gemini-2.0-flash','choices':[{'index':0,'delta':" ROLE ",'finish_reason':null}"
                "]},{'id':'msg_r1','object':'chat.completion.chunk','created':'<int>','model':"
                "'gemini-2.0-flash','choices':[{'index':0,'delta':{'content':'The '},"
                "'finish_reason':null}]},{'id':'msg_r1','object':'chat.completion.chunk',"
                "'created':'<int>','model':'gemini-2.0-flash','choices':[{'index':0,'delta':{"
                "'content':'cat.'},'finish_reason':null}]},{'id':'msg_r1','object':"
                "'chat.completion.chunk','created':'<int>','model':'gemini-2.0-flash','choices':["
                "{'index':0,'delta':{},'finish_reason':'stop'}]},{'id':'msg_r1','object':"
                "'chat.completion.chunk','created':'<int>','model':'gemini-2.0-flash','choices':"
                "[],'usage':{'prompt_tokens':12,'completion_tokens':3,'total_tokens':15}}]",
                back.chunks);
    json_decref(back.chunks);
    json_decref(r.chunks);
    free(events);
    free(chunks);
    free(sse);
}

/* ---- table, lifecycle ----------------------------------------------------------------------- */

static void test_provider__ops_table(void **state)
{
    (void)state;
    assert_ptr_equal(ap__provider_ops_for(AP_PROVIDER_OPENAI), &ap__openai_ops);
    assert_ptr_equal(ap__provider_ops_for(AP_PROVIDER_OPENAI_COMPAT), &ap__openai_ops);
    assert_ptr_equal(ap__provider_ops_for(AP_PROVIDER_ANTHROPIC), &ap__anthropic_ops);
    assert_ptr_equal(ap__provider_ops_for(AP_PROVIDER_GEMINI), &ap__gemini_ops);
    assert_null(ap__provider_ops_for(AP_PROVIDER_LOCAL));
    assert_null(ap__provider_ops_for((ap_provider_type)99));
    assert_string_equal(ap__openai_ops.name, "openai");
    assert_string_equal(ap__anthropic_ops.name, "anthropic");
    assert_string_equal(ap__gemini_ops.name, "gemini");
    ap__upreq_release(NULL);
    const struct ap__provider_ops *all[] = {OPENAI, ANTHROPIC, GEMINI};
    for (size_t i = 0; i < 3; i++) {
        all[i]->stream_free(NULL);
        /* An untouched stream reported ended: cut off before anything came. */
        struct stream_run r;
        run_stream(all[i], "m", "", 0, SPLIT_WHOLE, 1, true, &r);
        assert_int_equal(r.st, AP_ENETWORK);
        json_decref(r.chunks);
    }
}

/* ---- mutation: never crash, always fail cleanly --------------------------------------------- */

static void mutate(char *buf, size_t *len, size_t cap, uint32_t *seed)
{
    int n = 1 + (int)(rnd(seed) % 4);
    static const char tokens[] = "{}[]\",:0\n\r\\ae-9.\x00\xff\xc3";
    for (int k = 0; k<n && * len> 0; k++) {
        size_t at = rnd(seed) % *len;
        switch (rnd(seed) % 5) {
        case 0: /* overwrite */
            buf[at] = tokens[rnd(seed) % (sizeof(tokens) - 1)];
            break;
        case 1: /* delete a run */
        {
            size_t d = 1 + rnd(seed) % 8;
            if (d > *len - at)
                d = *len - at;
            memmove(buf + at, buf + at + d, *len - at - d);
            *len -= d;
            break;
        }
        case 2: /* insert */
            if (*len + 1 < cap) {
                memmove(buf + at + 1, buf + at, *len - at);
                buf[at] = tokens[rnd(seed) % (sizeof(tokens) - 1)];
                (*len)++;
            }
            break;
        case 3: /* truncate */
            *len = at;
            break;
        default: /* duplicate a run */
        {
            size_t d = 1 + rnd(seed) % 16;
            if (d > *len - at)
                d = *len - at;
            if (*len + d < cap) {
                memmove(buf + at + d, buf + at, *len - at);
                (*len) += d;
            }
            break;
        }
        }
    }
}

static void discard_chunk(void *ctx, const json_t *chunk)
{
    size_t *n = ctx;
    assert_true(json_is_object(chunk));
    (*n)++;
}

static void test_provider__mutated_inputs_fail_cleanly(void **state)
{
    (void)state;
    uint32_t seed = 12345;
    char buf[8192];

    /* Responses, success and error bodies, under every status class. */
    for (size_t i = 0; i < sizeof(parse_cases) / sizeof(parse_cases[0]) +
                               sizeof(parse_err_cases) / sizeof(parse_err_cases[0]);
         i++) {
        bool ok = i < sizeof(parse_cases) / sizeof(parse_cases[0]);
        const struct ap__provider_ops *ops =
            ok ? parse_cases[i].ops
               : parse_err_cases[i - sizeof(parse_cases) / sizeof(parse_cases[0])].ops;
        char *body =
            unq(ok ? parse_cases[i].body
                   : parse_err_cases[i - sizeof(parse_cases) / sizeof(parse_cases[0])].body);
        for (int m = 0; m < 300; m++) {
            size_t len = strlen(body);
            memcpy(buf, body, len);
            mutate(buf, &len, sizeof(buf), &seed);
            json_t *resp = NULL;
            ap_error err = {0};
            long status = m % 3 == 0 ? 200 : m % 3 == 1 ? 400 : 503;
            ap_status st = ops->parse(conf_for(ops), status, buf, len, &resp, NULL, &err);
            check_err("mutated response", st, &err);
            assert_true(st == AP_OK || st == AP_EDECODE || st == AP_EUPSTREAM);
            if (st == AP_OK) {
                assert_true(json_is_object(resp));
                json_t *a = ap__canon_resp_to_anthropic(resp);
                json_decref(a);
            }
            json_decref(resp);
        }
        free(body);
    }

    /* Streams, in random splits, ended or not. */
    for (size_t i = 0; i < sizeof(stream_cases) / sizeof(stream_cases[0]); i++) {
        const struct stream_case *c = &stream_cases[i];
        size_t tlen;
        char *text = relines(c->sse, (int)(i % 3), &tlen);
        for (int m = 0; m < 300; m++) {
            size_t len = tlen < sizeof(buf) ? tlen : sizeof(buf);
            memcpy(buf, text, len);
            mutate(buf, &len, sizeof(buf), &seed);
            size_t n = 0;
            struct ap__stream *s = c->ops->stream_new(conf_for(c->ops), "m", discard_chunk, &n);
            ap_error err = {0};
            ap_status st = AP_OK;
            size_t off = 0;
            while (off < len && st == AP_OK) {
                size_t k = 1 + rnd(&seed) % 64;
                if (k > len - off)
                    k = len - off;
                st = c->ops->stream_feed(s, buf + off, k, NULL, NULL, &err);
                off += k;
            }
            if (st == AP_OK && m % 2)
                st = c->ops->stream_feed(s, NULL, 0, NULL, NULL, &err);
            check_err("mutated stream", st, &err);
            c->ops->stream_free(s);
        }
        free(text);
    }

    /* Requests: the front end, then every provider's build. */
    static const char *const reqs[] = {
        IMG_REQ_OPENAI ",'stop':['x'],'response_format':{'type':'json_schema','json_schema':{"
                       "'schema':{'type':'object'}}},'user':'u','top_p':1}",
        "{'model':'c','max_tokens':9,'system':[{'type':'text','text':'s'}],'messages':[{'role':"
        "'user','content':[{'type':'image','source':{'type':'base64','media_type':'image/png',"
        "'data':'AAAA'}},{'type':'text','text':'t'}]},{'role':'assistant','content':'a'}],"
        "'stop_sequences':['q'],'stream':true,'temperature':0.1}",
    };
    const struct ap__provider_ops *all[] = {OPENAI, ANTHROPIC, GEMINI};
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        char *text = unq(reqs[i]);
        for (int m = 0; m < 1500; m++) {
            size_t len = strlen(text);
            memcpy(buf, text, len);
            mutate(buf, &len, sizeof(buf), &seed);
            json_t *req = json_loadb(buf, len, 0, NULL);
            if (req == NULL)
                continue;
            json_t *canon = NULL;
            ap_error err = {0};
            ap_status st = ap__anthropic_req_to_canon(req, &canon, &err);
            check_err("mutated front-end request", st, &err);
            for (size_t p = 0; p < 3; p++) {
                struct ap__upreq r = {0};
                ap_error e2 = {0};
                st = all[p]->build(conf_for(all[p]), "gemini-x", canon ? canon : req, m % 2, &r,
                                   &e2);
                check_err("mutated request", st, &e2);
                assert_true(st == AP_OK || st == AP_EINVAL);
                if (st == AP_OK)
                    assert_non_null(r.body);
                ap__upreq_release(&r);
            }
            /* The same document taken as a canonical chunk or response by the writer. */
            struct ap__anth_sse *w = ap__anth_sse_new(NULL);
            char *out = NULL;
            size_t olen;
            if (ap__anth_sse_chunk(w, req, &out, &olen) == AP_OK) {
                assert_true(valid_utf8(out));
                free(out);
                out = NULL;
            }
            assert_int_equal(ap__anth_sse_chunk(w, NULL, &out, &olen), AP_OK);
            free(out);
            ap__anth_sse_free(w);
            json_decref(ap__canon_resp_to_anthropic(req));
            json_decref(canon);
            json_decref(req);
        }
        free(text);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_provider__build_cases),
        cmocka_unit_test(test_provider__build_errors),
        cmocka_unit_test(test_provider__parse_cases),
        cmocka_unit_test(test_provider__parse_finish_reasons),
        cmocka_unit_test(test_provider__parse_errors),
        cmocka_unit_test(test_provider__error_messages_are_capped_and_redacted),
        cmocka_unit_test(test_provider__stream_cases),
        cmocka_unit_test(test_provider__stream_defaults),
        cmocka_unit_test(test_provider__sse_parser),
        cmocka_unit_test(test_provider__sse_limits),
        cmocka_unit_test(test_provider__anthropic_req_to_canon),
        cmocka_unit_test(test_provider__anthropic_req_to_canon_errors),
        cmocka_unit_test(test_provider__anthropic_request_round_trip),
        cmocka_unit_test(test_provider__canon_resp_to_anthropic),
        cmocka_unit_test(test_provider__anthropic_sse_writer),
        cmocka_unit_test(test_provider__gemini_stream_to_anthropic_client),
        cmocka_unit_test(test_provider__ops_table),
        cmocka_unit_test(test_provider__mutated_inputs_fail_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
