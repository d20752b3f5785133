/*
 * imageinfo.h — an image's format and pixel dimensions from its header,
 * without decoding it.
 *
 * Used before a decoder (tesseract, vips) sees an uploaded image, so a
 * decompression bomb (a small file declaring 50000 x 50000 pixels) is refused
 * by its declared size. Formats: PNG, JPEG, GIF, WebP, TIFF, BMP. The parser
 * reads through a callback, a few small reads at known offsets, so it never
 * loads the file (a TIFF's directory may sit at its end) and can be fuzzed
 * from memory (sl_imageinfo_mem).
 */
#ifndef SL_IMAGEINFO_H
#define SL_IMAGEINFO_H

#include <stddef.h>
#include <stdint.h>

typedef struct sl_imageinfo_s {
    const char *format; /* "png", "jpeg", "gif", "webp", "tiff", "bmp"; static */
    uint32_t width, height;
} sl_imageinfo_t;

/** Reads up to len bytes at off into buf; returns the count (short at EOF) or
 *  a negative value on error. */
typedef long (*sl_imageinfo_read_fn)(void *ctx, uint64_t off, void *buf, size_t len);

/**
 * Fills *out from the header read through `rd` (ctx passed untouched).
 * Returns 0; SL_ENOTFOUND when the format is none of the above; SL_EINVAL
 * when it is one of them but the header is damaged or declares a zero size;
 * SL_EIO when a read fails.
 */
int sl_imageinfo_read(sl_imageinfo_read_fn rd, void *ctx, sl_imageinfo_t *out);

/** The same over a buffer (borrowed). */
int sl_imageinfo_mem(const void *buf, size_t len, sl_imageinfo_t *out);

/** The same over a file (path borrowed); SL_EIO if it cannot be opened.
 *  Blocking: a few small reads of a local file. */
int sl_imageinfo_file(const char *path, sl_imageinfo_t *out);

#endif
