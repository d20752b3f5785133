/*
 * multipart.h — a streaming multipart/form-data parser (RFC 7578, RFC 2046 §5.1).
 *
 * Push parser: feed it the body in chunks of any size (down to one byte); it
 * calls back at each part's start (with its parsed headers), for each run of
 * the part's data, and at each part's end. It never buffers a part's data: the
 * only memory it holds is the boundary and a bounded header buffer, so memory
 * does not grow with the body. Data callbacks may be called with any split of
 * the data; a delimiter that straddles two feeds is handled (bytes that may be
 * the start of a delimiter are held back until the next feed decides).
 * A parser inside a part's data holds ~200 bytes: the header buffer (grown as
 * needed, at most SL_MULTIPART_MAX_HEADERS plus the decoded strings) exists
 * only while a part's header block is being read and parsed.
 */
#ifndef SL_MULTIPART_H
#define SL_MULTIPART_H

#include <stddef.h>

#define SL_MULTIPART_MAX_BOUNDARY 70    /* RFC 2046: 1..70 characters */
#define SL_MULTIPART_MAX_HEADERS 16384  /* bytes of one part's header block */

typedef struct sl_multipart_s sl_multipart_t;

/** One part's headers; every string is borrowed until the callback returns. */
typedef struct sl_multipart_part_s {
    const char *name;          /* Content-Disposition name=, or NULL */
    const char *filename;      /* Content-Disposition filename= (filename* preferred), or NULL */
    const char *content_type;  /* Content-Type of the part, or NULL */
} sl_multipart_part_t;

typedef struct sl_multipart_cbs_s {
    /** A part starts. Return 0 to go on, non-zero to stop parsing (feed returns SL_ECANCELED). */
    int (*part_begin_cb)(void *arg, const sl_multipart_part_t *part);
    /** Part data; `data` is borrowed. Non-zero return stops parsing as above. */
    int (*part_data_cb)(void *arg, const char *data, size_t len);
    /** The current part ended (its closing delimiter was seen). Non-zero stops parsing. */
    int (*part_end_cb)(void *arg);
} sl_multipart_cbs_t;

/**
 * Extracts the boundary parameter from a Content-Type header value
 * ("multipart/form-data; boundary=XYZ", quoted or not) into out (NUL-terminated).
 * Returns its length, SL_EINVAL if the type is not multipart/form-data or the
 * boundary is missing or invalid.
 */
int sl_multipart_boundary(const char *content_type, char *out, size_t outlen);

/**
 * Creates a parser. `boundary` is copied, `cbs` is copied, `arg` is passed back.
 * Returns owned, or NULL on a bad boundary / no memory.
 */
sl_multipart_t *sl_multipart_new(const char *boundary, const sl_multipart_cbs_t *cbs, void *arg);

/**
 * Feeds len bytes. Returns 0 when all were consumed, SL_EPROTO on malformed
 * input (bad delimiter line, header block too large, missing
 * Content-Disposition), SL_ECANCELED if a callback asked to stop, SL_ENOMEM
 * if the header buffer could not grow. After an error every further feed
 * returns the same error.
 */
int sl_multipart_feed(sl_multipart_t *mp, const char *data, size_t len);

/** Returns 1 once the final delimiter ("--boundary--") has been parsed. */
int sl_multipart_done(const sl_multipart_t *mp);

/** Frees the parser (any state). */
void sl_multipart_free(sl_multipart_t *mp);

#endif
