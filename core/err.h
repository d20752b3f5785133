/*
 * err.h — the error codes every Sluice module returns.
 *
 * Functions return int: 0 on success, a negative SL_E* code on failure.
 * sl_strerror() turns a code into a short, stable, lowercase string that is
 * also what Lua flows see as the second return value ("timeout", ...).
 */
#ifndef SL_ERR_H
#define SL_ERR_H

enum {
    SL_OK = 0,
    SL_ENOMEM = -1,     /* allocation failed */
    SL_EINVAL = -2,     /* bad argument or malformed input */
    SL_ETIMEDOUT = -3,  /* an operation ran past its deadline */
    SL_ECLOSED = -4,    /* the peer or the owner went away */
    SL_ECANCELED = -5,  /* the operation was cancelled by its owner */
    SL_EIO = -6,        /* an OS-level I/O error */
    SL_ETOOBIG = -7,    /* a size or count limit was exceeded */
    SL_EUNAVAIL = -8,   /* a dependency (Postgres, Redis, a service) is down */
    SL_ENOTFOUND = -9,  /* no such object */
    SL_EEXIST = -10,    /* the object already exists */
    SL_EAGAIN = -11,    /* try again later (backpressure, rate limit) */
    SL_EPROTO = -12,    /* the peer broke its protocol */
    SL_ECONFIG = -13,   /* invalid configuration */
    SL_EDB = -14,       /* a database statement failed */
};

/** Returns a static string for an SL_E* code (never NULL). */
const char *sl_strerror(int err);

#endif
