-- image.lua - wrk script: an OpenAI Chat Completions request with one photo inline, as a
-- base64 data URL (the way the OpenAI SDKs send local files).
--
-- The photo is BENCH_IMAGE, default ../shared/corpus/photos/Samsung_Galaxy_S7_Edge.jpg
-- relative to the repository (a 4032x3024 = 12.2 MP, 4.2 MB phone JPEG): a 5.6 MB body.
-- aperture decodes, resizes (model gpt-4o: the openai-high target, 1024x768 here) and
-- re-encodes it before forwarding; the fake upstream and Portkey get it as it is.
--   BENCH_IMAGE=photo.jpg wrk -s bench/gateway/image.lua http://127.0.0.1:PORT/v1/chat/completions

local here = debug.getinfo(1, 'S').source:match('^@(.*/)') or './'
package.path = here .. '?.lua;' .. package.path
local common = require('common')

local path = os.getenv('BENCH_IMAGE') or (here .. '../../../shared/corpus/photos/Samsung_Galaxy_S7_Edge.jpg')
local f = assert(io.open(path, 'rb'), 'image.lua: cannot open ' .. path .. ' (set BENCH_IMAGE)')
local data = f:read('*a')
f:close()

-- base64 (RFC 4648, with padding) into an FFI buffer: fast enough that each wrk thread can
-- build its own body at start (about 0.1 s for the 4.2 MB photo).
local ffi = require('ffi')
local function base64(s)
  local alpha = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
  local enc = ffi.new('uint8_t[64]')
  for i = 0, 63 do enc[i] = alpha:byte(i + 1) end
  local n = #s
  local src = ffi.cast('const uint8_t *', s)
  local out = ffi.new('uint8_t[?]', math.floor((n + 2) / 3) * 4)
  local o, i = 0, 0
  while i + 2 < n do
    local v = src[i] * 65536 + src[i + 1] * 256 + src[i + 2]
    out[o] = enc[math.floor(v / 262144)]
    out[o + 1] = enc[math.floor(v / 4096) % 64]
    out[o + 2] = enc[math.floor(v / 64) % 64]
    out[o + 3] = enc[v % 64]
    o, i = o + 4, i + 3
  end
  local rest = n - i
  if rest > 0 then
    local v = src[i] * 65536 + (rest == 2 and src[i + 1] * 256 or 0)
    out[o] = enc[math.floor(v / 262144)]
    out[o + 1] = enc[math.floor(v / 4096) % 64]
    out[o + 2] = rest == 2 and enc[math.floor(v / 64) % 64] or 61 -- '='
    out[o + 3] = 61
    o = o + 4
  end
  return ffi.string(out, o)
end

wrk.method = 'POST'
wrk.headers['Content-Type'] = 'application/json'
common.install(
  '{"model":"gpt-4o","messages":[{"role":"user","content":[' ..
  '{"type":"text","text":"What is in this photo? Answer in one sentence. (request ',
  ')"},{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,' .. base64(data) ..
  '","detail":"high"}}]}],"max_tokens":64}')
