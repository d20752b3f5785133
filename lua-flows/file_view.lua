-- file_view.lua — what a browser shows of a file: a preview and a thumbnail.
--
--   preview ──always──> thumbnail
--
-- The preview (a PNG of the first page, or of the image, 1024 px) and the
-- thumbnail (a 256 px JPEG) are independent: a file whose preview fails
-- (an odd PDF feature, a timeout) should still get its thumbnail, so the
-- preview step goes on with `always`, whatever happened. The run's result is
-- the thumbnail's: a table row needs it most.
--
-- Office documents are converted to PDF first by LibreOffice (`soffice`,
-- optional): without it both steps succeed with the note "no_preview", so
-- the file is done and its run says why there is no image (lib/office.lua).
--
-- Both steps only call lua-flows/lib modules, which run poppler and libvips
-- as subprocesses (exec without a shell, with a timeout) and store the image
-- with sl.artifact — idempotent, so a step that runs twice is harmless.

local preview = require "preview"
local thumbnail = require "thumbnail"

return flow {
  start = "preview",
  steps = {
    preview = {
      run = function(ctx, file)
        return preview.make(file, ctx) -- the artifact id (a true value), or nil, err
      end,
      timeout = 120,
      always = "thumbnail",
    },
    thumbnail = {
      run = function(ctx, file)
        return thumbnail.make(file, ctx)
      end,
      timeout = 60,
    },
  },
}
