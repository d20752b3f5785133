/*
 * err.c — sl_strerror(): the one vocabulary of error words. Log lines, API
 * error details and Lua flows (the second value a primitive returns) all use
 * these words; docs/flows.md lists the ones flows see.
 */
#include "err.h"

const char *sl_strerror(int err)
{
    switch (err) {
    case SL_OK: return "ok";
    case SL_ENOMEM: return "out_of_memory";
    case SL_EINVAL: return "bad_input";
    case SL_ETIMEDOUT: return "timeout";
    case SL_ECLOSED: return "closed";
    case SL_ECANCELED: return "cancelled";
    case SL_EIO: return "io_error";
    case SL_ETOOBIG: return "too_large";
    case SL_EUNAVAIL: return "unavailable";
    case SL_ENOTFOUND: return "not_found";
    case SL_EEXIST: return "exists";
    case SL_EAGAIN: return "busy";
    case SL_EPROTO: return "protocol_error";
    case SL_ECONFIG: return "config_error";
    case SL_EDB: return "db_error";
    }
    return "io_error";
}
