/*
 * imageinfo.c — image dimensions from headers (see imageinfo.h).
 *
 * Every read is bounds-checked by the reader (a short read is a damaged
 * file), every loop has a fixed bound, and nothing is allocated: the parser
 * is meant to meet hostile input. Sources: PNG (RFC 2083 section 11.2.2,
 * IHDR), GIF89a (logical screen and first image descriptor), JPEG (ITU T.81 annex B: walk the
 * marker segments to the first SOFn), WebP (RIFF container; VP8 key frame
 * header, RFC 6386 section 9.1; VP8L header; VP8X canvas), TIFF 6.0 (first
 * IFD, tags 256 ImageWidth and 257 ImageLength), BMP (BITMAPINFOHEADER or
 * the OS/2 BITMAPCOREHEADER).
 */
#include "imageinfo.h"
#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define JPEG_MAX_SEGMENTS 4096 /* markers walked before giving up */
#define TIFF_MAX_ENTRIES 4096  /* entries of the first IFD looked at */
#define GIF_MAX_BLOCKS 65536   /* extension sub-blocks before the first frame */

typedef struct rd_s {
    sl_imageinfo_read_fn fn;
    void *ctx;
} rd_t;

/* Exactly len bytes at off: 0, SL_EINVAL (short: damaged) or SL_EIO. */
static int get(const rd_t *r, uint64_t off, void *buf, size_t len)
{
    long n = r->fn(r->ctx, off, buf, len);
    if (n < 0)
        return SL_EIO;
    return (size_t)n == len ? 0 : SL_EINVAL;
}

static uint32_t be16(const uint8_t *p)
{
    return (uint32_t)p[0] << 8 | p[1];
}
static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static uint32_t le16(const uint8_t *p)
{
    return (uint32_t)p[1] << 8 | p[0];
}
static uint32_t le24(const uint8_t *p)
{
    return (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}
static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static int done(sl_imageinfo_t *out, const char *fmt, uint32_t w, uint32_t h)
{
    if (w == 0 || h == 0)
        return SL_EINVAL;
    out->format = fmt;
    out->width = w;
    out->height = h;
    return 0;
}

static int png(const rd_t *r, sl_imageinfo_t *out)
{
    uint8_t b[16]; /* IHDR: length, type, width, height */
    int rc = get(r, 8, b, sizeof b);
    if (rc)
        return rc;
    if (memcmp(b + 4, "IHDR", 4) != 0 || be32(b) != 13)
        return SL_EINVAL;
    /* the spec caps both at 2^31 - 1 */
    if (be32(b + 8) > 0x7fffffffu || be32(b + 12) > 0x7fffffffu)
        return SL_EINVAL;
    return done(out, "png", be32(b + 8), be32(b + 12));
}

static int jpeg(const rd_t *r, sl_imageinfo_t *out)
{
    uint64_t off = 2; /* after SOI */
    for (int i = 0; i < JPEG_MAX_SEGMENTS; i++) {
        uint8_t m[2];
        int rc = get(r, off, m, 1);
        if (rc)
            return rc;
        if (m[0] != 0xFF)
            return SL_EINVAL;
        /* fill bytes: any number of 0xFF before the marker code (counted
         * against the same bound as segments) */
        do {
            if ((rc = get(r, ++off, m + 1, 1)) != 0)
                return rc;
        } while (m[1] == 0xFF && ++i < JPEG_MAX_SEGMENTS);
        off++; /* past the code: at the segment length */
        uint8_t c = m[1];
        if (c == 0xD8 || c == 0x01 || (c >= 0xD0 && c <= 0xD7))
            continue; /* standalone markers */
        if (c == 0xD9 || c == 0xDA || c == 0x00)
            return SL_EINVAL; /* EOI or scan data before any frame header */
        uint8_t h[7]; /* length, precision, height, width */
        if ((rc = get(r, off, h, 2)) != 0)
            return rc;
        uint32_t len = be16(h);
        if (len < 2)
            return SL_EINVAL;
        int sof = c >= 0xC0 && c <= 0xCF && c != 0xC4 && c != 0xC8 && c != 0xCC;
        if (sof) {
            if (len < 7 || (rc = get(r, off, h, sizeof h)) != 0)
                return rc ? rc : SL_EINVAL;
            /* height 0 means "defined by a later DNL marker": treat as damaged */
            return done(out, "jpeg", be16(h + 5), be16(h + 3));
        }
        off += len;
    }
    return SL_EINVAL;
}

/*
 * The logical screen, grown to hold the first frame: a decoder that renders a
 * frame larger than the screen (or placed off it) allocates for the frame, so
 * a 1 x 1 screen must not hide a 50000 x 50000 frame. Extensions before the
 * frame are skipped block by block (a bounded walk).
 */
static int gif(const rd_t *r, sl_imageinfo_t *out)
{
    uint8_t b[9];
    int rc = get(r, 6, b, 7); /* width, height, flags, background, aspect */
    if (rc)
        return rc;
    uint32_t w = le16(b), h = le16(b + 2);
    uint64_t off = 13;
    if (b[4] & 0x80) /* global color table: 3 * 2^(n + 1) bytes */
        off += 3u << ((b[4] & 7) + 1);
    for (int i = 0; i < GIF_MAX_BLOCKS; i++) {
        if ((rc = get(r, off, b, 1)) != 0)
            return rc;
        if (b[0] == 0x2C) { /* image descriptor: left, top, width, height */
            if ((rc = get(r, off + 1, b, 8)) != 0)
                return rc;
            uint32_t fw = le16(b) + le16(b + 4), fh = le16(b + 2) + le16(b + 6);
            return done(out, "gif", fw > w ? fw : w, fh > h ? fh : h);
        }
        if (b[0] != 0x21) /* the trailer (0x3B) or garbage: no frame */
            return SL_EINVAL;
        off += 2; /* introducer and label, then sub-blocks up to a 0 length */
        for (;;) {
            if (++i >= GIF_MAX_BLOCKS)
                return SL_EINVAL;
            if ((rc = get(r, off, b, 1)) != 0)
                return rc;
            off += 1u + b[0];
            if (b[0] == 0)
                break;
        }
    }
    return SL_EINVAL;
}

static int webp(const rd_t *r, sl_imageinfo_t *out)
{
    uint8_t b[18]; /* the first chunk's header and the start of its data */
    int rc = get(r, 12, b, 18);
    if (rc)
        return rc;
    const uint8_t *d = b + 8; /* chunk data */
    if (memcmp(b, "VP8 ", 4) == 0) {
        /* 3-byte frame tag (bit 0 clear: key frame), start code, 14-bit sizes */
        if ((d[0] & 1) != 0 || d[3] != 0x9d || d[4] != 0x01 || d[5] != 0x2a)
            return SL_EINVAL;
        return done(out, "webp", le16(d + 6) & 0x3fff, le16(d + 8) & 0x3fff);
    }
    if (memcmp(b, "VP8L", 4) == 0) {
        if (d[0] != 0x2f)
            return SL_EINVAL;
        uint32_t bits = le32(d + 1);
        return done(out, "webp", (bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1);
    }
    if (memcmp(b, "VP8X", 4) == 0) /* flags, reserved, then the canvas size - 1 */
        return done(out, "webp", le24(d + 4) + 1, le24(d + 7) + 1);
    return SL_EINVAL;
}

static int tiff(const rd_t *r, const uint8_t *hdr, sl_imageinfo_t *out)
{
    int le = hdr[0] == 'I';
    uint32_t (*u16)(const uint8_t *) = le ? le16 : be16;
    uint32_t (*u32)(const uint8_t *) = le ? le32 : be32;
    uint64_t ifd = u32(hdr + 4);
    uint8_t b[12];
    int rc = get(r, ifd, b, 2);
    if (rc)
        return rc;
    uint32_t n = u16(b), w = 0, h = 0;
    if (n > TIFF_MAX_ENTRIES)
        return SL_EINVAL;
    for (uint32_t i = 0; i < n && (w == 0 || h == 0); i++) {
        if ((rc = get(r, ifd + 2 + 12ull * i, b, sizeof b)) != 0)
            return rc;
        uint32_t tag = u16(b), type = u16(b + 2);
        /* SHORT (3) sits in the first two bytes of the value field, LONG (4) fills it */
        uint32_t v = type == 3 ? u16(b + 8) : type == 4 ? u32(b + 8) : 0;
        if (tag == 256)
            w = v;
        else if (tag == 257)
            h = v;
    }
    return done(out, "tiff", w, h);
}

static int bmp(const rd_t *r, sl_imageinfo_t *out)
{
    uint8_t b[12];
    int rc = get(r, 14, b, sizeof b);
    if (rc)
        return rc;
    uint32_t hsize = le32(b);
    if (hsize == 12) /* BITMAPCOREHEADER: 16-bit unsigned sizes */
        return done(out, "bmp", le16(b + 4), le16(b + 6));
    if (hsize < 40)
        return SL_EINVAL;
    int32_t w = (int32_t)le32(b + 4), h = (int32_t)le32(b + 8);
    if (w <= 0 || h == INT32_MIN)
        return SL_EINVAL;
    return done(out, "bmp", (uint32_t)w, (uint32_t)(h < 0 ? -h : h)); /* < 0: top-down */
}

int sl_imageinfo_read(sl_imageinfo_read_fn fn, void *ctx, sl_imageinfo_t *out)
{
    if (!fn || !out)
        return SL_EINVAL;
    rd_t r = {fn, ctx};
    uint8_t h[12];
    memset(h, 0, sizeof h);
    long n = fn(ctx, 0, h, sizeof h);
    if (n < 0)
        return SL_EIO;
    memset(out, 0, sizeof *out);
    if (n >= 8 && memcmp(h, "\x89PNG\r\n\x1a\n", 8) == 0)
        return png(&r, out);
    if (n >= 3 && h[0] == 0xFF && h[1] == 0xD8 && h[2] == 0xFF)
        return jpeg(&r, out);
    if (n >= 6 && (memcmp(h, "GIF87a", 6) == 0 || memcmp(h, "GIF89a", 6) == 0))
        return gif(&r, out);
    if (n >= 12 && memcmp(h, "RIFF", 4) == 0 && memcmp(h + 8, "WEBP", 4) == 0)
        return webp(&r, out);
    if (n >= 8 && (memcmp(h, "II*\0", 4) == 0 || memcmp(h, "MM\0*", 4) == 0))
        return tiff(&r, h, out);
    if (n >= 2 && h[0] == 'B' && h[1] == 'M')
        return bmp(&r, out);
    return SL_ENOTFOUND;
}

typedef struct mem_s {
    const uint8_t *p;
    size_t len;
} mem_t;

static long mem_read(void *ctx, uint64_t off, void *buf, size_t len)
{
    const mem_t *m = ctx;
    if (off >= m->len)
        return 0;
    size_t n = m->len - (size_t)off < len ? m->len - (size_t)off : len;
    memcpy(buf, m->p + off, n);
    return (long)n;
}

int sl_imageinfo_mem(const void *buf, size_t len, sl_imageinfo_t *out)
{
    mem_t m = {buf, len};
    return sl_imageinfo_read(mem_read, &m, out);
}

static long fd_read(void *ctx, uint64_t off, void *buf, size_t len)
{
    int fd = *(int *)ctx;
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, (char *)buf + got, len - got, (off_t)(off + got));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    return (long)got;
}

int sl_imageinfo_file(const char *path, sl_imageinfo_t *out)
{
    if (!path || !out)
        return SL_EINVAL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return SL_EIO;
    int rc = sl_imageinfo_read(fd_read, &fd, out);
    close(fd);
    return rc;
}
