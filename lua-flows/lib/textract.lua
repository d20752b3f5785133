-- textract.lua — Amazon Textract's DetectDocumentText (synchronous OCR).
--
--   local text = textract.extract(file)   -- or nil, err, detail
--
-- The request (Textract API reference, DetectDocumentText; AWS JSON 1.1):
--   POST {endpoint}/
--   Content-Type: application/x-amz-json-1.1
--   X-Amz-Target: Textract.DetectDocumentText
--   {"Document": {"Bytes": "<base64 of the file>"}}
-- signed with AWS Signature V4 by the runtime from the textract section's
-- keys and region (the keys never reach Lua). The answer's Blocks of type
-- LINE, in order, are the text.
--
-- The synchronous API takes JPEG, PNG, TIFF and single-page PDF documents of
-- at most 10 MB; anything else is refused here, before paying for a call.
--
-- Multi-page documents (a PDF of more than one page, a TIFF, or a PDF/TIFF
-- over 10 MB, up to 500 MB) go through the asynchronous API when the file is
-- stored in S3 (storage.backend s3: `file.s3` is {bucket, key}):
--   StartDocumentTextDetection {DocumentLocation: {S3Object: {Bucket, Name}},
--                               ClientRequestToken: "sl-<file id>"}
--   GetDocumentTextDetection {JobId, MaxResults: 1000[, NextToken]}
-- polled with sl.sleep between calls (0.5 s, doubling, at most 5 s; the run
-- is parked meanwhile, holding no connection), until SUCCEEDED (every page
-- of results, LINE blocks in page order), FAILED (bad_input with Textract's
-- StatusMessage) or ASYNC_DEADLINE_S. The token makes a retried or taken-over
-- step find the job it started instead of paying for a second one (Textract
-- keeps a JobId for 7 days). Textract reads the object with the configured
-- keys, so the bucket must be in Textract's region and readable by them.
-- On the filesystem backend a multi-page document is "unsupported" (the
-- detail says why): Textract can read only what is in S3.
--
-- Errors: "not_configured", "bad_input" (a document Textract cannot read),
-- "too_large", "unauthorized" (bad keys or a signature AWS refuses), "no_text", and the transient
-- "rate_limited" (HTTP 429 or a throttling exception), "server_error",
-- "timeout", "unavailable".

local text = require "text"

local M = {}

local MAX_DOCUMENT_BYTES = 10 * 1024 * 1024 -- Textract's limit for Document.Bytes
local MAX_ASYNC_BYTES = 500 * 1024 * 1024   -- asynchronous PDF/TIFF in S3
local ASYNC_DEADLINE_S = 600                -- a job not done by then: "timeout"
local POLL_FIRST_S, POLL_MAX_S = 0.5, 5
local MAX_ANSWER_BYTES = 16 * 1024 * 1024

local ACCEPTED = {
  ["application/pdf"] = true,
  ["image/jpeg"] = true,
  ["image/png"] = true,
  ["image/tiff"] = true,
}

-- AWS's authentication errors (common to every AWS service; most come with
-- HTTP 400, some with 403): the keys or the signature are wrong, which no
-- retry and no other file will fix.
local AUTH = {
  IncompleteSignatureException = true,
  InvalidSignatureException = true,
  MissingAuthenticationTokenException = true,
  UnrecognizedClientException = true,
  InvalidClientTokenId = true,
  ExpiredTokenException = true,
  AccessDeniedException = true,
  SignatureDoesNotMatch = true,
}

-- Textract's error types (the "__type" of a 400 answer) that mean "slow
-- down": AWS throttles with HTTP 400, not 429.
local THROTTLING = {
  ThrottlingException = true,
  ProvisionedThroughputExceededException = true,
  LimitExceededException = true,
}

-- "com.amazonaws...#ThrottlingException" -> "ThrottlingException"
local function error_type(body)
  local doc = text.decode_json(body)
  if type(doc) == "table" and type(doc.__type) == "string" then
    return (doc.__type:match("#?([%w_]+)$")), doc.message or doc.Message
  end
  return nil
end

-- The LINE blocks' texts joined by newlines.
local function lines_of(doc)
  local out = {}
  if type(doc) == "table" and type(doc.Blocks) == "table" then
    for _, b in ipairs(doc.Blocks) do
      if type(b) == "table" and b.BlockType == "LINE" and type(b.Text) == "string" then
        out[#out + 1] = b.Text
      end
    end
  end
  return table.concat(out, "\n")
end

-- One signed Textract call: the decoded answer, or nil, err, detail (the
-- same error words as DetectDocumentText's).
local function call(endpoint, target, req)
  local res, err = sl.http.request {
    method = "POST",
    url = text.strip_slash(endpoint) .. "/",
    headers = {
      ["Content-Type"] = "application/x-amz-json-1.1",
      ["X-Amz-Target"] = "Textract." .. target,
    },
    body = sl.json.encode(req),
    max_bytes = MAX_ANSWER_BYTES,
    service = "textract",
  }
  if not res then
    return text.fail("textract", err or "unavailable")
  end
  if res.status ~= 200 then
    local ty, msg = error_type(res.body)
    if ty and THROTTLING[ty] then
      return text.fail("textract", "rate_limited", ty, { status = res.status })
    end
    if ty and AUTH[ty] then
      -- Sluice's signing or the configured keys are wrong: an operator's
      -- problem, so it is logged at error level with AWS's own words.
      local detail = ty .. (msg and (": " .. msg) or "")
      sl.log("error", "textract: request refused: " .. detail, {
        module = "textract", error = "unauthorized", status = res.status,
      })
      return nil, "unauthorized", detail
    end
    if res.status == 400 and ty then
      -- InvalidParameterException, UnsupportedDocumentException,
      -- BadDocumentException, DocumentTooLargeException,
      -- InvalidS3ObjectException, ValidationException: the file's (or the
      -- request's) fault, which no retry fixes.
      local word = ty == "DocumentTooLargeException" and "too_large" or "bad_input"
      return text.fail("textract", word, ty .. (msg and (": " .. msg) or ""), { status = 400 })
    end
    return text.http_fail("textract", res)
  end
  local doc = text.decode_json(res.body)
  if type(doc) ~= "table" then
    return text.fail("textract", "bad_response", "answer is not JSON")
  end
  return doc
end

-- The number of pages of a PDF (pdfinfo), or nil, err, detail.
local function pdf_pages(file)
  local res, err, detail = text.exec("textract", {
    argv = { "pdfinfo", file.path },
    input = file.path,
    timeout = 30,
  })
  if not res then
    return nil, err, detail
  end
  local n = tonumber((res.stdout or ""):match("\nPages:%s*(%d+)") or
    (res.stdout or ""):match("^Pages:%s*(%d+)"))
  if not n or n < 1 then
    return text.fail("textract", "bad_input", "pdfinfo found no pages")
  end
  return n
end

-- Multi-page: StartDocumentTextDetection on the S3 object, then
-- GetDocumentTextDetection until the job ends (see the top of this file).
local function extract_async(endpoint, file)
  local started, err, detail = call(endpoint, "StartDocumentTextDetection", {
    DocumentLocation = { S3Object = { Bucket = file.s3.bucket, Name = file.s3.key } },
    ClientRequestToken = "sl-" .. tostring(file.id):gsub("[^%w%-_]", ""),
  })
  if not started then
    return nil, err, detail
  end
  local job = started.JobId
  if type(job) ~= "string" or job == "" then
    return text.fail("textract", "bad_response", "no JobId in the answer")
  end
  local waited, pause = 0, POLL_FIRST_S
  local out, token = {}, nil
  while true do
    local req = { JobId = job, MaxResults = 1000 }
    if token then
      req.NextToken = token
    end
    local doc
    doc, err, detail = call(endpoint, "GetDocumentTextDetection", req)
    if not doc then
      return nil, err, detail
    end
    if doc.JobStatus == "IN_PROGRESS" and not token then
      if waited >= ASYNC_DEADLINE_S then
        return text.fail("textract", "timeout", "job " .. job .. " not done after "
          .. ASYNC_DEADLINE_S .. " s")
      end
      sl.sleep(pause)
      waited = waited + pause
      pause = math.min(pause * 2, POLL_MAX_S)
    elseif doc.JobStatus == "SUCCEEDED" or doc.JobStatus == "PARTIAL_SUCCESS" then
      local t = lines_of(doc)
      if t ~= "" then
        out[#out + 1] = t
      end
      token = type(doc.NextToken) == "string" and doc.NextToken or nil
      if not token then
        break
      end
    elseif doc.JobStatus == "FAILED" then
      return text.fail("textract", "bad_input", "job failed: " ..
        tostring(doc.StatusMessage or "no StatusMessage"))
    else
      return text.fail("textract", "bad_response", "JobStatus " .. tostring(doc.JobStatus))
    end
  end
  local t = table.concat(out, "\n")
  if text.is_blank(t) then
    return nil, "no_text"
  end
  return t
end

--- The text Textract reads in the file, or nil, err, detail. Never blank.
function M.extract(file)
  local svc = sl.service("textract")
  if not (svc and svc.configured) then
    return nil, "not_configured"
  end
  if not svc.credentials then
    return text.fail("textract", "not_configured", "textract needs access_key_id and secret_access_key")
  end
  local region = svc.region or "us-east-1"
  local endpoint = svc.url or svc.endpoint or ("https://textract." .. region .. ".amazonaws.com")

  local mime = text.base_mime(file.mime)
  if not ACCEPTED[mime] then
    return text.fail("textract", "unsupported", "Textract does not read " .. tostring(file.mime))
  end
  if (file.size or 0) == 0 then
    return nil, "no_text"
  end
  local multi = mime == "image/tiff" and file.s3 ~= nil
  if mime == "application/pdf" then
    local pages, perr, pdetail = pdf_pages(file)
    if not pages then
      return nil, perr, pdetail
    end
    multi = pages > 1
  end
  if (mime == "application/pdf" or mime == "image/tiff") and file.size > MAX_DOCUMENT_BYTES then
    multi = true
  end
  if multi then
    if file.size > MAX_ASYNC_BYTES then
      return text.fail("textract", "too_large", "over Textract's 500 MB limit")
    end
    if type(file.s3) ~= "table" then
      return text.fail("textract", "unsupported", "a multi-page or large document needs "
        .. "Textract's asynchronous API, which reads the file from S3 (storage.backend: s3)")
    end
    return extract_async(endpoint, file)
  end
  if file.size > MAX_DOCUMENT_BYTES then
    return text.fail("textract", "too_large", "over Textract's 10 MB limit")
  end

  -- coreutils' base64 does the encoding (-w0: one line, no wrapping); the
  -- sandbox has no io to read the file with.
  local b64, err, detail = text.exec("textract", {
    argv = { "base64", "-w0", file.path },
    timeout = 30,
  })
  if not b64 then
    return nil, err, detail
  end
  local req = { Document = { Bytes = (b64.stdout:gsub("%s+", "")) } }
  b64 = nil -- the encoded file can be 13 MB: let it go before the request
  local doc
  doc, err, detail = call(endpoint, "DetectDocumentText", req)
  if not doc then
    return nil, err, detail
  end
  local t = lines_of(doc)
  if text.is_blank(t) then
    return nil, "no_text"
  end
  return t
end

return M
