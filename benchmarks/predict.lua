-- wrk script for benchmarks/predict.py: single-image prediction calls cycling through JPEG files.
-- Arguments (after --): folder of 0.jpg .. (n-1).jpg, n, "multipart" or "raw", API token.
local boundary = "pigeonholebenchmark"
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local folder, count, mode, token = args[1], tonumber(args[2]), args[3], args[4]
  bodies = {}
  for i = 0, count - 1 do
    local f = assert(io.open(folder .. "/" .. i .. ".jpg", "rb"))
    local data = f:read("*all")
    f:close()
    if mode == "raw" then
      bodies[#bodies + 1] = data
    else
      bodies[#bodies + 1] = "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"files\"; filename=\""
        .. i .. ".jpg\"\r\nContent-Type: image/jpeg\r\n\r\n" .. data .. "\r\n--" .. boundary .. "--\r\n"
    end
  end
  headers = {["Authorization"] = "Bearer " .. token,
             ["Content-Type"] = mode == "raw" and "image/jpeg" or ("multipart/form-data; boundary=" .. boundary)}
  statuses = {}
  at = math.random(1, #bodies)
end

function request()
  at = at % #bodies + 1
  return wrk.format("POST", wrk.path, headers, bodies[at])
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and headers["retry-after"] == nil and headers["Retry-After"] == nil then
    statuses["503 without Retry-After"] = (statuses["503 without Retry-After"] or 0) + 1
  end
end

function done(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      merged[status] = (merged[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(merged) do
    parts[#parts + 1] = tostring(status) .. "=" .. n
  end
  local e = summary.errors
  io.write(string.format("RESULT requests=%d socket_errors=%d p50_ms=%.3f p99_ms=%.3f statuses=%s\n",
    summary.requests, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, table.concat(parts, ",")))
end
