/* common/fsutil.c — see fsutil.h. */
#include "common/fsutil.h"
#include "common/log.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

fs_status fs_atomic_open(fs_atomic_file *af, const char *dst)
{
    memset(af, 0, sizeof *af);
    if (strlen(dst) >= sizeof af->dst - 32) return FS_ERR_ARG;
    strcpy(af->dst, dst);
    const char *slash = strrchr(dst, '/');
    int dirlen = slash ? (int)(slash - dst + 1) : 0;
    snprintf(af->tmp, sizeof af->tmp, "%.*s.%s.tmp.%ld", dirlen, dst, dst + dirlen, (long)getpid());
    af->f = fopen(af->tmp, "wb");
    if (!af->f) {
        fs_log_error("%s: cannot create temporary file: %s", af->tmp, strerror(errno));
        return FS_ERR_IO;
    }
    return FS_OK;
}

fs_status fs_atomic_commit(fs_atomic_file *af)
{
    int err = 0;
    if (fflush(af->f) != 0 || fsync(fileno(af->f)) != 0) err = errno;
    if (fclose(af->f) != 0 && !err) err = errno;
    af->f = NULL;
    if (!err && rename(af->tmp, af->dst) != 0) err = errno;
    if (err) {
        fs_log_error("%s: could not be written: %s", af->dst, strerror(err));
        unlink(af->tmp);
        return FS_ERR_IO;
    }
    return FS_OK;
}

void fs_atomic_abort(fs_atomic_file *af)
{
    if (af->f) fclose(af->f);
    af->f = NULL;
    unlink(af->tmp);
}

fs_status fs_mkdir_p(const char *dir)
{
    char buf[4096];
    if (!dir || strlen(dir) >= sizeof buf) return FS_ERR_ARG;
    strcpy(buf, dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) goto fail;
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) goto fail;
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) { errno = ENOTDIR; goto fail; }
    return FS_OK;
fail:
    fs_log_error("%s: cannot create folder: %s", buf, strerror(errno));
    return FS_ERR_IO;
}
