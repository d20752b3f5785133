/*
 * test_imageinfo.c — core/imageinfo: the declared size of each format from a
 * hand-made header, and refusals: damaged headers, zero sizes, truncation,
 * unknown formats, a JPEG whose segments never reach a frame header.
 */
#include "check.h"

#include <stdint.h>
#include <stdlib.h>

#include "core/err.h"
#include "core/imageinfo.h"

static int parse(const void *p, size_t n, sl_imageinfo_t *info)
{
    return sl_imageinfo_mem(p, n, info);
}

static void test_png(void)
{
    /* 50000 x 50000: the bomb the flows must refuse by its header alone */
    static const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n', 0, 0, 0, 13,
                                  'I',  'H', 'D', 'R', 0,    0,    0xc3, 0x50, 0, 0, 0xc3, 0x50,
                                  8,    2,   0,   0,   0};
    sl_imageinfo_t i;
    CHECK_EQ(parse(png, sizeof png, &i), 0);
    CHECK_STREQ(i.format, "png");
    CHECK_EQ(i.width, 50000);
    CHECK_EQ(i.height, 50000);
    CHECK_EQ(parse(png, 20, &i), SL_EINVAL); /* truncated IHDR */
    uint8_t bad[sizeof png];
    memcpy(bad, png, sizeof png);
    bad[12] = 'X'; /* not IHDR first */
    CHECK_EQ(parse(bad, sizeof bad, &i), SL_EINVAL);
    memcpy(bad, png, sizeof png);
    memset(bad + 16, 0, 4); /* width 0 */
    CHECK_EQ(parse(bad, sizeof bad, &i), SL_EINVAL);
    memcpy(bad, png, sizeof png);
    bad[16] = 0x80; /* over 2^31 - 1 */
    CHECK_EQ(parse(bad, sizeof bad, &i), SL_EINVAL);
}

static void test_jpeg(void)
{
    /* SOI, APP0 (16 bytes), fill bytes, SOF2 (progressive) 640 wide, 480 high */
    static const uint8_t jpg[] = {0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0, 1, 1, 0, 0,
                                  1,    0,    1,    0,    0, 0xFF, 0xFF, 0xC2, 0, 17, 8, 0x01, 0xE0,
                                  0x02, 0x80, 3,    1,    0x22, 0, 2, 0x11, 1, 3, 0x11, 1};
    sl_imageinfo_t i;
    CHECK_EQ(parse(jpg, sizeof jpg, &i), 0);
    CHECK_STREQ(i.format, "jpeg");
    CHECK_EQ(i.width, 640);
    CHECK_EQ(i.height, 480);
    CHECK_EQ(parse(jpg, 22, &i), SL_EINVAL); /* ends before the frame header */
    /* a DHT (0xC4) is not a frame header; then SOS: no size anywhere */
    static const uint8_t nosof[] = {0xFF, 0xD8, 0xFF, 0xC4, 0, 2, 0xFF, 0xDA, 0, 2};
    CHECK_EQ(parse(nosof, sizeof nosof, &i), SL_EINVAL);
    /* a zero-length segment would loop forever if trusted */
    static const uint8_t zero[] = {0xFF, 0xD8, 0xFF, 0xE1, 0, 0, 0xFF, 0xE1, 0, 0};
    CHECK_EQ(parse(zero, sizeof zero, &i), SL_EINVAL);
    /* only fill bytes: bounded */
    uint8_t *ff = malloc(100000);
    memset(ff, 0xFF, 100000);
    ff[1] = 0xD8;
    CHECK_EQ(parse(ff, 100000, &i), SL_EINVAL);
    free(ff);
}

static void test_gif_webp_bmp_tiff(void)
{
    sl_imageinfo_t i;
    /* screen 300 x 200, no color table, a graphic control extension, then a
     * 10 x 10 frame inside the screen */
    static const uint8_t gif[] = {'G', 'I', 'F', '8', '9', 'a', 0x2c, 0x01, 0xc8, 0x00, 0, 0, 0,
                                  0x21, 0xF9, 4, 0, 0, 0, 0, 0,
                                  0x2C, 0, 0, 0, 0, 10, 0, 10, 0, 0};
    CHECK_EQ(parse(gif, sizeof gif, &i), 0);
    CHECK_STREQ(i.format, "gif");
    CHECK_EQ(i.width, 300);
    CHECK_EQ(i.height, 200);
    /* a 1 x 1 screen with a global color table (2 entries) and a 50000 x 40000
     * frame at (10, 0): the frame's extent counts */
    static const uint8_t gbomb[] = {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0, 0x80, 0, 0,
                                    0, 0, 0, 0xff, 0xff, 0xff,
                                    0x2C, 10, 0, 0, 0, 0x50, 0xC3, 0x40, 0x9C, 0};
    CHECK_EQ(parse(gbomb, sizeof gbomb, &i), 0);
    CHECK_EQ(i.width, 50010);
    CHECK_EQ(i.height, 40000);
    CHECK_EQ(parse(gbomb, 19, &i), SL_EINVAL); /* no frame yet */
    static const uint8_t gtrail[] = {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0, 0, 0, 0, 0x3B};
    CHECK_EQ(parse(gtrail, sizeof gtrail, &i), SL_EINVAL);

    /* WebP lossy: VP8 key frame 100 x 50 */
    static const uint8_t vp8[] = {'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'E', 'B', 'P', 'V', 'P',
                                  '8', ' ', 0,   0,   0, 0, 0x10, 0, 0, 0x9d, 0x01, 0x2a, 100, 0,
                                  50,  0};
    CHECK_EQ(parse(vp8, sizeof vp8, &i), 0);
    CHECK_STREQ(i.format, "webp");
    CHECK_EQ(i.width, 100);
    CHECK_EQ(i.height, 50);
    /* WebP extended: canvas 16384 x 16384 (stored minus one, 24 bits) */
    static const uint8_t vp8x[] = {'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'E', 'B', 'P', 'V', 'P',
                                   '8', 'X', 10,  0,   0, 0, 0,   0, 0, 0, 0xff, 0x3f, 0, 0xff,
                                   0x3f, 0};
    CHECK_EQ(parse(vp8x, sizeof vp8x, &i), 0);
    CHECK_EQ(i.width, 16384);
    CHECK_EQ(i.height, 16384);
    /* WebP lossless: 14-bit sizes minus one: 2 x 3 */
    static const uint8_t vp8l[] = {'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'E', 'B', 'P', 'V', 'P',
                                   'L', 'L', 5,   0,   0, 0, 0x2f, 0x01, 0x80, 0, 0, 0, 0, 0, 0, 0};
    uint8_t l[sizeof vp8l];
    memcpy(l, vp8l, sizeof l);
    l[14] = '8'; /* "VP8L" */
    CHECK_EQ(parse(l, sizeof l, &i), 0);
    CHECK_EQ(i.width, 2);
    CHECK_EQ(i.height, 3);

    /* BMP, BITMAPINFOHEADER, top-down (negative height) */
    uint8_t bmp[30] = {'B', 'M'};
    bmp[14] = 40;
    bmp[18] = 0x10; /* width 16 */
    bmp[22] = 0xF8;
    bmp[23] = bmp[24] = bmp[25] = 0xFF; /* height -8 */
    CHECK_EQ(parse(bmp, sizeof bmp, &i), 0);
    CHECK_STREQ(i.format, "bmp");
    CHECK_EQ(i.width, 16);
    CHECK_EQ(i.height, 8);

    /* TIFF, big-endian, IFD at 8 with a SHORT width and a LONG height */
    static const uint8_t tif[] = {'M', 'M', 0, 42, 0, 0, 0, 8, 0, 2,
                                  1, 0, 0, 3, 0, 0, 0, 1, 0x03, 0xE8, 0, 0,
                                  1, 1, 0, 4, 0, 0, 0, 1, 0, 0, 0x07, 0xD0};
    CHECK_EQ(parse(tif, sizeof tif, &i), 0);
    CHECK_STREQ(i.format, "tiff");
    CHECK_EQ(i.width, 1000);
    CHECK_EQ(i.height, 2000);
    CHECK_EQ(parse(tif, 24, &i), SL_EINVAL); /* the IFD is cut off */
    uint8_t far[8] = {'I', 'I', 42, 0, 0xff, 0xff, 0xff, 0x7f}; /* IFD past the end */
    CHECK_EQ(parse(far, sizeof far, &i), SL_EINVAL);

    CHECK_EQ(parse("%PDF-1.7\n", 9, &i), SL_ENOTFOUND);
    CHECK_EQ(parse("", 0, &i), SL_ENOTFOUND);
    CHECK_EQ(sl_imageinfo_file("/nonexistent/x.png", &i), SL_EIO);
}

int main(void)
{
    test_png();
    test_jpeg();
    test_gif_webp_bmp_tiff();
    return check_summary();
}
