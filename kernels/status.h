/*
 * kernels/status.h — status codes returned by every library function in fedseg.
 *
 * They live in the lowest layer (kernels) so that kernels, common, node and
 * aggregator all speak the same codes without a dependency cycle. Library code
 * never calls exit(); it returns one of these and, where a person needs to know
 * more (which file, which field), prints one line with fs_log_error() first.
 */
#ifndef FS_STATUS_H
#define FS_STATUS_H

typedef enum {
    FS_OK = 0,
    FS_ERR_ARG,          /* a caller passed an invalid argument or shape      */
    FS_ERR_NOMEM,        /* host or device allocation failed                  */
    FS_ERR_IO,           /* a file could not be opened, read or written       */
    FS_ERR_FORMAT,       /* bytes did not parse (corrupt, truncated, foreign) */
    FS_ERR_CHECKSUM,     /* a checksum did not match                          */
    FS_ERR_MISMATCH,     /* well-formed but incompatible (preset, shape)      */
    FS_ERR_UNSUPPORTED,  /* this backend or build lacks the operation         */
    FS_ERR_DEVICE,       /* a CUDA / cuBLAS call failed                       */
    FS_ERR_NOT_FOUND,    /* a named file, case or modality does not exist     */
    FS_ERR_NUMERIC,      /* NaN or Inf where finite values are required       */
    FS_ERR_ABANDONED     /* too few parties remain: the round is abandoned    */
} fs_status;

/* A short English description of a status code; never NULL. */
static inline const char *fs_status_str(fs_status s)
{
    switch (s) {
    case FS_OK: return "ok";
    case FS_ERR_ARG: return "invalid argument";
    case FS_ERR_NOMEM: return "out of memory";
    case FS_ERR_IO: return "I/O error";
    case FS_ERR_FORMAT: return "malformed data";
    case FS_ERR_CHECKSUM: return "checksum mismatch";
    case FS_ERR_MISMATCH: return "incompatible data";
    case FS_ERR_UNSUPPORTED: return "unsupported by this backend";
    case FS_ERR_DEVICE: return "device error";
    case FS_ERR_NOT_FOUND: return "not found";
    case FS_ERR_NUMERIC: return "non-finite value";
    case FS_ERR_ABANDONED: return "round abandoned";
    }
    return "unknown status";
}

/* Propagate a non-OK status to the caller. */
#define FS_TRY(expr) do { fs_status fs_try_s_ = (expr); if (fs_try_s_ != FS_OK) return fs_try_s_; } while (0)

#endif
