/*
 * storage_s3.c — the storage interface's S3 backend (core/storage_int.h).
 * Not implemented yet: opening it is refused (SL_ECONFIG), as before.
 */
#include "err.h"
#include "storage_int.h"

int sl_store_s3_open(const sl_store_conf_t *conf, sl_workq_t *wq, struct event_base *base,
                     sl_store_t **out)
{
    (void)conf;
    (void)wq;
    (void)base;
    (void)out;
    return SL_ECONFIG;
}
