/* rmtree.c — see rmtree.h. */
#include "core/rmtree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* Empties the directory open at fd (owned: closed here). A pass may miss
 * entries created or renamed during it, so passes repeat while one removed
 * something, at most a few times (a writer racing the removal can only delay
 * it; the final rmdir then fails with ENOTEMPTY and is reported). */
static int empty_dir(int fd, int depth)
{
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = errno;
        close(fd);
        return e;
    }
    int first_err = 0;
    for (int pass = 0; pass < 4; pass++) {
        int removed = 0;
        rewinddir(d);
        struct dirent *e;
        while ((errno = 0, e = readdir(d)) != NULL) {
            const char *n = e->d_name;
            if (n[0] == '.' && (n[1] == '\0' || (n[1] == '.' && n[2] == '\0')))
                continue;
            int rc = 0;
            if (e->d_type != DT_DIR && unlinkat(dirfd(d), n, 0) == 0) {
                removed++;
                continue;
            }
            if (e->d_type == DT_DIR || errno == EISDIR || errno == EPERM)
                rc = depth < SL_RMTREE_MAX_DEPTH ? 0 : ELOOP;
            else
                rc = errno;
            if (rc == 0) {
                int sub = openat(dirfd(d), n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (sub < 0) {
                    /* not a directory after all (a symlink, or swapped): unlink it */
                    rc = unlinkat(dirfd(d), n, 0) == 0 ? 0 : errno;
                    if (rc == 0)
                        removed++;
                } else {
                    rc = empty_dir(sub, depth + 1);
                    if (unlinkat(dirfd(d), n, AT_REMOVEDIR) == 0)
                        removed++;
                    else if (rc == 0)
                        rc = errno;
                }
            }
            if (rc == ENOENT)
                rc = 0; /* gone meanwhile */
            if (rc && !first_err)
                first_err = rc;
        }
        if (errno && !first_err)
            first_err = errno;
        if (!removed)
            break;
    }
    closedir(d);
    return first_err;
}

int sl_rmtree_at(int at, const char *name)
{
    int fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        if (errno != ENOTDIR && errno != ELOOP)
            return errno;
        return unlinkat(at, name, 0) == 0 || errno == ENOENT ? 0 : errno;
    }
    int rc = empty_dir(fd, 1);
    if (unlinkat(at, name, AT_REMOVEDIR) != 0 && errno != ENOENT && rc == 0)
        rc = errno;
    return rc;
}
