/* A FUSE filesystem in one file, for the end-to-end tests: `fuse_hello MOUNTPOINT` opens /dev/fuse,
 * mounts a read-only filesystem with one file, /hello, and serves it from a background process
 * until the mount goes away. It speaks the kernel's FUSE protocol directly (no libfuse), so it
 * builds statically and runs in a busybox container. */
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

static const char CONTENT[] = "hello from fuse\n";
enum { ROOT = FUSE_ROOT_ID, FILE_NODE = 2 };

static void fill_attr(struct fuse_attr *attr, uint64_t node)
{
    memset(attr, 0, sizeof(*attr));
    attr->ino = node;
    if (node == ROOT) {
        attr->mode = S_IFDIR | 0755;
        attr->nlink = 2;
    } else {
        attr->mode = S_IFREG | 0444;
        attr->nlink = 1;
        attr->size = sizeof(CONTENT) - 1;
    }
}

static void reply(int fd, uint64_t unique, int error, const void *data, size_t size)
{
    struct fuse_out_header out = {.len = sizeof(out) + size, .error = error, .unique = unique};
    struct iovec iov[2] = {{&out, sizeof(out)}, {(void *)data, size}};
    if (writev(fd, iov, size ? 2 : 1) < 0 && errno != ENOENT) /* ENOENT: the request was interrupted */
        perror("fuse_hello: reply");
}

static void serve(int fd)
{
    static char buf[FUSE_MIN_READ_BUFFER + 131072];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < (ssize_t)sizeof(struct fuse_in_header))
            return; /* ENODEV: unmounted */
        struct fuse_in_header *in = (struct fuse_in_header *)buf;
        void *arg = buf + sizeof(*in);
        switch (in->opcode) {
        case FUSE_INIT: {
            struct fuse_init_in *init = arg;
            struct fuse_init_out out = {.major = FUSE_KERNEL_VERSION, .minor = FUSE_KERNEL_MINOR_VERSION,
                                        .max_readahead = init->max_readahead, .max_write = 4096};
            reply(fd, in->unique, 0, &out, sizeof(out));
            break;
        }
        case FUSE_LOOKUP: {
            if (in->nodeid != ROOT || strcmp(arg, "hello") != 0) {
                reply(fd, in->unique, -ENOENT, NULL, 0);
                break;
            }
            struct fuse_entry_out out = {.nodeid = FILE_NODE, .generation = 1};
            fill_attr(&out.attr, FILE_NODE);
            reply(fd, in->unique, 0, &out, sizeof(out));
            break;
        }
        case FUSE_GETATTR: {
            struct fuse_attr_out out = {0};
            fill_attr(&out.attr, in->nodeid);
            reply(fd, in->unique, 0, &out, sizeof(out));
            break;
        }
        case FUSE_OPEN:
        case FUSE_OPENDIR: {
            struct fuse_open_out out = {0};
            reply(fd, in->unique, 0, &out, sizeof(out));
            break;
        }
        case FUSE_READ: {
            struct fuse_read_in *read_in = arg;
            size_t size = sizeof(CONTENT) - 1, offset = read_in->offset < size ? read_in->offset : size;
            size_t count = size - offset < read_in->size ? size - offset : read_in->size;
            reply(fd, in->unique, 0, CONTENT + offset, count);
            break;
        }
        case FUSE_READDIR: /* an empty listing: the test only looks up /hello */
        case FUSE_RELEASE:
        case FUSE_RELEASEDIR:
        case FUSE_FLUSH:
            reply(fd, in->unique, 0, NULL, 0);
            break;
        case FUSE_FORGET:
        case FUSE_BATCH_FORGET:
        case FUSE_INTERRUPT:
            break; /* no reply */
        default:
            reply(fd, in->unique, -ENOSYS, NULL, 0);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuse_hello MOUNTPOINT\n");
        return 2;
    }
    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        perror("fuse_hello: /dev/fuse");
        return 1;
    }
    char options[128];
    snprintf(options, sizeof(options), "fd=%d,rootmode=%o,user_id=0,group_id=0", fd, S_IFDIR | 0755);
    if (mount("fuse_hello", argv[1], "fuse", MS_NOSUID | MS_NODEV | MS_RDONLY, options) < 0) {
        perror("fuse_hello: mount");
        return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fuse_hello: fork");
        return 1;
    }
    if (pid == 0) {
        serve(fd);
        _exit(0);
    }
    return 0;
}
