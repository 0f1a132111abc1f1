-- text.lua - wrk script: a text-only OpenAI Chat Completions request (non-streamed).
--
-- The same bytes go to the fake upstream directly, to aperture and to Portkey (but for a
-- request number in the prompt, see common.lua); run.sh adds the headers each one needs (-H).
-- The fake answers with a fixed-size completion of about 630 bytes.
--   wrk -s bench/gateway/text.lua http://127.0.0.1:PORT/v1/chat/completions

package.path = (debug.getinfo(1, 'S').source:match('^@(.*/)') or './') .. '?.lua;' .. package.path
local common = require('common')

wrk.method = 'POST'
wrk.headers['Content-Type'] = 'application/json'
common.install(
  '{"model":"gpt-4o-mini","messages":[' ..
  '{"role":"system","content":"You are a concise assistant."},' ..
  '{"role":"user","content":"Say hello in one short sentence. (request ',
  ')"}],"max_tokens":32,"temperature":0}')
