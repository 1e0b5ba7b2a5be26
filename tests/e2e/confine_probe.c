/* Filesystem operations a container tries on a 9p-backed volume (tests/e2e/test_confinement.py).
   Each prints "label=ok" or "label=ERRNO-NAME", so the test reads what the host allowed.
   usage: confine_probe [as UID GID] OP ARGS...
     create PATH MODE | mkdir PATH MODE | chmod PATH MODE | fifo PATH | chardev PATH | link OLD NEW
     xattr PATH NAME (a user.* value, or a file capability for security.capability) | read PATH */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

static int report(const char *label, int rc) {
    if (rc < 0) {
        const char *name = strerrorname_np(errno);
        printf("%s=%s\n", label, name ? name : "error");
        return 1;
    }
    printf("%s=ok\n", label);
    return 0;
}

int main(int argc, char **argv) {
    int i = 1;
    if (argc > 4 && strcmp(argv[1], "as") == 0) {
        gid_t gid = (gid_t)atoi(argv[3]);
        if (setgroups(1, &gid) || setgid(gid) || setuid((uid_t)atoi(argv[2]))) { perror("as"); return 2; }
        i = 4;
    }
    if (argc < i + 2) { fprintf(stderr, "usage\n"); return 2; }
    const char *op = argv[i], *path = argv[i + 1], *arg = argc > i + 2 ? argv[i + 2] : "";
    char label[512];
    snprintf(label, sizeof label, "%s:%s%s%s", op, strrchr(path, '/') ? strrchr(path, '/') + 1 : path,
             *arg && strcmp(op, "link") ? ":" : "", strcmp(op, "link") ? arg : "");
    mode_t mode = (mode_t)strtol(arg, NULL, 8);
    umask(0);
    if (!strcmp(op, "create")) {
        int fd = open(path, O_CREAT | O_EXCL | O_WRONLY, mode);
        if (fd >= 0) close(fd);
        return report(label, fd);
    }
    if (!strcmp(op, "mkdir")) return report(label, mkdir(path, mode));
    if (!strcmp(op, "chmod")) return report(label, chmod(path, mode));
    if (!strcmp(op, "fifo")) return report(label, mknod(path, S_IFIFO | 0644, 0));
    if (!strcmp(op, "chardev")) return report(label, mknod(path, S_IFCHR | 0666, makedev(1, 3)));
    if (!strcmp(op, "link")) return report(label, link(path, arg));
    if (!strcmp(op, "xattr")) {
        if (!strcmp(arg, "security.capability")) {
            /* VFS_CAP_REVISION_2, effective, CAP_SETUID|CAP_SETGID permitted */
            unsigned int cap[5] = {0x02000001, (1u << 6) | (1u << 7), 0, 0, 0};
            return report(label, setxattr(path, arg, cap, sizeof cap, 0));
        }
        return report(label, setxattr(path, arg, "v", 1, 0));
    }
    if (!strcmp(op, "read")) {
        char buf[256];
        int fd = open(path, O_RDONLY);
        if (fd < 0) return report(label, fd);
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n < 0) return report(label, -1);
        buf[n] = 0;
        for (char *p = buf; *p; p++) if (*p == '\n' || *p == '=') *p = ' ';
        printf("%s=content %s\n", label, buf);
        return 0;
    }
    fprintf(stderr, "unknown op %s\n", op);
    return 2;
}
