/*
 * test_rmtree.c — core/rmtree.c: a tree of files and dirs is removed; a
 * symlink inside it (to a file and to a directory outside) is unlinked and its
 * target survives; nesting past SL_RMTREE_MAX_DEPTH is left and reported,
 * with no fd leaked; a missing name is success; a plain file is removed.
 */
#include "core/rmtree.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

static char root[256];

static int exists(const char *rel)
{
    char p[1024];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", root, rel);
    return lstat(p, &st) == 0;
}

static void mk(const char *rel, int dir)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    if (dir) {
        CHECK(mkdir(p, 0700) == 0);
    } else {
        FILE *f = fopen(p, "w");
        CHECK(f != NULL);
        if (f) {
            fputs("x", f);
            fclose(f);
        }
    }
}

static int open_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

static void test_tree_and_symlinks(void)
{
    mk("outside", 1);
    mk("outside/keep.txt", 0);
    mk("t", 1);
    mk("t/a.txt", 0);
    mk("t/sub", 1);
    mk("t/sub/b.txt", 0);
    mk("t/sub/deeper", 1);
    mk("t/sub/deeper/c", 0);
    mk("t/empty", 1);
    char target[1024], link[1024];
    snprintf(target, sizeof target, "%s/outside", root);
    snprintf(link, sizeof link, "%s/t/sub/to_dir", root);
    CHECK(symlink(target, link) == 0);
    snprintf(target, sizeof target, "%s/outside/keep.txt", root);
    snprintf(link, sizeof link, "%s/t/to_file", root);
    CHECK(symlink(target, link) == 0);
    snprintf(link, sizeof link, "%s/t/dangling", root);
    CHECK(symlink("/nonexistent/x", link) == 0);

    int fds = open_fds();
    char p[1024];
    snprintf(p, sizeof p, "%s/t", root);
    CHECK_EQ(sl_rmtree_at(AT_FDCWD, p), 0);
    CHECK(!exists("t"));
    CHECK(exists("outside"));
    CHECK(exists("outside/keep.txt"));
    CHECK_EQ(open_fds(), fds);
}

static void test_too_deep(void)
{
    char rel[8192] = "deep";
    mk(rel, 1);
    for (int i = 0; i < SL_RMTREE_MAX_DEPTH + 5; i++) {
        strcat(rel, "/d");
        mk(rel, 1);
    }
    int fds = open_fds();
    char p[1024];
    snprintf(p, sizeof p, "%s/deep", root);
    CHECK_EQ(sl_rmtree_at(AT_FDCWD, p), ELOOP);
    CHECK(exists("deep")); /* left in place, reported */
    CHECK_EQ(open_fds(), fds);
    int dirfd_ = open(root, O_RDONLY | O_DIRECTORY);
    CHECK(dirfd_ >= 0);
    /* cut the chain at a depth within the limit, then it all goes */
    char cut[8192] = "deep";
    for (int i = 0; i < 10; i++)
        strcat(cut, "/d");
    char from[9000], to[9000];
    snprintf(from, sizeof from, "%s/%s", root, cut);
    snprintf(to, sizeof to, "%s/deep2", root);
    CHECK(rename(from, to) == 0);
    CHECK_EQ(sl_rmtree_at(dirfd_, "deep"), 0);
    CHECK_EQ(sl_rmtree_at(dirfd_, "deep2"), 0);
    CHECK(!exists("deep"));
    CHECK(!exists("deep2"));
    close(dirfd_);
}

static void test_missing_and_file(void)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/nothing-here", root);
    CHECK_EQ(sl_rmtree_at(AT_FDCWD, p), 0);
    mk("plain", 0);
    snprintf(p, sizeof p, "%s/plain", root);
    CHECK_EQ(sl_rmtree_at(AT_FDCWD, p), 0);
    CHECK(!exists("plain"));
    /* the name itself a symlink to a directory: the link goes, the target stays */
    mk("target", 1);
    mk("target/f", 0);
    char t[1024];
    snprintf(t, sizeof t, "%s/target", root);
    snprintf(p, sizeof p, "%s/alias", root);
    CHECK(symlink(t, p) == 0);
    CHECK_EQ(sl_rmtree_at(AT_FDCWD, p), 0);
    CHECK(!exists("alias"));
    CHECK(exists("target/f"));
}

static void test_many_entries(void)
{
    mk("many", 1);
    char rel[64];
    for (int i = 0; i < 3000; i++) {
        snprintf(rel, sizeof rel, "many/f%d", i);
        mk(rel, 0);
    }
    char p[1024];
    snprintf(p, sizeof p, "%s/many", root);
    CHECK_EQ(sl_rmtree_at(AT_FDCWD, p), 0);
    CHECK(!exists("many"));
}

int main(void)
{
    snprintf(root, sizeof root, "/tmp/sl-rmtree-XXXXXX");
    if (!mkdtemp(root)) {
        perror("mkdtemp");
        return 1;
    }
    test_tree_and_symlinks();
    test_too_deep();
    test_missing_and_file();
    test_many_entries();
    CHECK_EQ(sl_rmtree_at(AT_FDCWD, root), 0);
    return check_summary();
}
