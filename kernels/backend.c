/*
 * kernels/backend.c — choosing a backend by name ("cpu", "cuda", "auto") and
 * the CPU thread setting. The CPU table lives in kernels/cpu/, the CUDA one in
 * kernels/cuda/ (only when fedseg is built with CUDA; otherwise the stubs
 * below say it is absent).
 *
 * Tested by tests/test_kernels_fd.c (selection by name, unknown names).
 */
#include <string.h>
#include "backend.h"
#include "cpu/cpu_internal.h"

static int fs_cpu_threads_requested = 0; /* 0 = all cores */

void fs_backend_cpu_set_threads(int threads) { fs_cpu_threads_requested = threads > 0 ? threads : 0; }

int fs_cpu_requested_threads(void) { return fs_cpu_threads_requested; }

#ifndef FS_HAVE_CUDA
const fs_backend *fs_backend_cuda(void) { return NULL; }
int fs_backend_cuda_available(void) { return 0; }
#endif

/* Looks a backend up by name; on failure returns NULL and points *why (when
 * why is non-NULL) at a sentence for the user. */
const fs_backend *fs_backend_get(const char *name, const char **why)
{
    const char *dummy;
    if (!why) why = &dummy;
    *why = NULL;
    if (!name) {
        *why = "no backend name given (use cpu, cuda or auto)";
        return NULL;
    }
    if (strcmp(name, "cpu") == 0) return fs_backend_cpu();
    if (strcmp(name, "cuda") == 0 || strcmp(name, "auto") == 0) {
        int want_cuda = name[0] == 'c';
        const fs_backend *cuda = fs_backend_cuda();
        if (cuda && fs_backend_cuda_available()) return cuda;
        if (!want_cuda) return fs_backend_cpu();
        *why = cuda ? "no CUDA device is present"
                    : "this fedseg was built without CUDA (nvcc was not found at configure time)";
        return NULL;
    }
    *why = "unknown backend name (use cpu, cuda or auto)";
    return NULL;
}
