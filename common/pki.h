/*
 * common/pki.h — the consortium's certificates, made and checked with OpenSSL's
 * libcrypto (3.0 API: EVP_PKEY, X509, X509V3 extensions; never the openssl CLI).
 *
 * A consortium has one certificate authority (EC P-256, self-signed,
 * basicConstraints CA:TRUE critical, keyUsage keyCertSign+cRLSign critical).
 * It issues two kinds of leaf certificate, each with a fresh EC P-256 key:
 *   server — the aggregator: CN "aggregator", extendedKeyUsage serverAuth,
 *            subjectAltName naming every host the sites may dial;
 *   client — a site: CN = the site name, extendedKeyUsage clientAuth,
 *            subjectAltName URI spiffe://<consortium>/site/<name>.
 * Leaves are CA:FALSE with keyUsage digitalSignature, carry subject and
 * authority key identifiers, never outlive their CA, and get a random positive
 * 127-bit serial. Identity in fedseg is the subject common name: the
 * aggregator admits a site whose CN is on its site list.
 *
 * Files: certificates are PEM ("BEGIN CERTIFICATE"), keys PKCS#8 PEM
 * ("BEGIN PRIVATE KEY", unencrypted — protected by file mode). Every file is
 * written atomically (temporary file in the same folder, fsync, rename).
 * WARNING: private keys are created mode 0600 from the first byte (the
 * temporary file is opened O_CREAT|O_EXCL with mode 0600), and key bytes held
 * in memory this module owns are wiped (OPENSSL_cleanse) before release.
 *
 * The consortium folder layout built on top of this lives in
 * common/provision.h. Tested by tests/test_pki.c (library) and
 * tests/test_provision.sh (the CLI, cross-checked with the openssl CLI).
 */
#ifndef FS_PKI_H
#define FS_PKI_H

#include <stddef.h>
#include "kernels/status.h"

#define FS_PKI_NAME_MAX 63       /* longest site / consortium name (the wire
                                    protocol carries at most 63 characters) */
#define FS_PKI_CA_DAYS 3650      /* CA validity (10 years)                   */
#define FS_PKI_LEAF_DAYS 1825    /* aggregator / site validity (5 years),
                                    clamped to the CA's own end              */
#define FS_PKI_MAX_SAN 8         /* subjectAltName entries per certificate   */

#if defined(__GNUC__)
#define FS_PKI_CHECK __attribute__((warn_unused_result))
#else
#define FS_PKI_CHECK
#endif

/* What provisioning records about a certificate (consortium.json). */
typedef struct {
    char cn[FS_PKI_NAME_MAX + 1];
    char serial[41];      /* hex, upper case, as `openssl x509 -serial` prints  */
    char sha256[96];      /* "AB:CD:..", as `openssl x509 -fingerprint -sha256` */
    char not_after[24];   /* "YYYY-MM-DDTHH:MM:SSZ"                             */
} fs_pki_cert_info;

typedef enum { FS_PKI_SERVER = 1, FS_PKI_CLIENT = 2 } fs_pki_role;

/* One leaf certificate to issue. san[] entries are "DNS:name", "IP:addr"
 * (IPv4 or IPv6 literal) or "URI:uri". */
typedef struct {
    fs_pki_role role;
    const char *cn;
    const char *org;              /* the consortium name (subject O)         */
    const char *san[FS_PKI_MAX_SAN];
    int nsan;
    int days;                     /* 0 = FS_PKI_LEAF_DAYS                    */
} fs_pki_leaf;

/* A loaded CA: its certificate and private key (opaque; the key is wiped when
 * freed). */
typedef struct fs_pki_ca fs_pki_ca;

/* 1 when name is a valid site or consortium name: 1..FS_PKI_NAME_MAX
 * characters from [A-Za-z0-9_.-], not starting with '.' or '-' (so it is safe
 * as a folder name, a command-line value and a SPIFFE path segment). */
int fs_pki_name_ok(const char *name);

/* Makes a new CA for `consortium` (subject CN "<consortium> CA", O
 * <consortium>), valid `days` (0 = FS_PKI_CA_DAYS), and writes cert_path and
 * key_path (0600). Neither file may exist yet (FS_ERR_ARG otherwise). On
 * FS_OK *out holds the CA for issuing (fs_pki_ca_free it); info may be NULL. */
fs_status fs_pki_ca_create(const char *consortium, int days, const char *cert_path,
                           const char *key_path, fs_pki_ca **out, fs_pki_cert_info *info);

/* Loads an existing CA. Fails (with a message naming the file) when a file is
 * missing or unreadable (FS_ERR_NOT_FOUND / FS_ERR_IO), does not parse
 * (FS_ERR_FORMAT), the certificate is not a CA, or the key is not the
 * certificate's key (FS_ERR_MISMATCH). Warns when the key file is readable by
 * group or others. */
fs_status fs_pki_ca_load(const char *cert_path, const char *key_path, fs_pki_ca **out);

/* Releases a CA, wiping its private key. NULL is fine. */
void fs_pki_ca_free(fs_pki_ca *ca);

/* Issues one leaf certificate with a fresh key; writes cert_path and key_path
 * (0600), neither of which may exist yet (FS_ERR_ARG otherwise, nothing
 * written). info (may be NULL) receives its serial and fingerprint. */
fs_status fs_pki_issue(const fs_pki_ca *ca, const fs_pki_leaf *req, const char *cert_path,
                       const char *key_path, fs_pki_cert_info *info);

/* Reads a PEM certificate's CN, serial, fingerprint and end of validity. */
fs_status fs_pki_cert_info_read(const char *cert_path, fs_pki_cert_info *info);

/* The subject common name of a PEM certificate into cn[cap] (NUL-terminated).
 * FS_ERR_FORMAT when the file holds no certificate or no CN, FS_ERR_ARG when
 * it does not fit. */
fs_status fs_pki_cert_cn(const char *cert_path, char *cn, size_t cap);

/* WARNING: the one check that a certificate belongs to the consortium.
 * FS_OK when cert_path chains to the CA certificate in ca_path (signature,
 * validity period now, CA constraints, strict X.509 checks); FS_ERR_MISMATCH
 * (with the reason logged) when it does not; FS_ERR_IO / FS_ERR_FORMAT when a
 * file is unreadable or not a certificate. */
FS_PKI_CHECK fs_status fs_pki_verify(const char *ca_path, const char *cert_path);

/* FS_OK when key_path holds the private key of the certificate in cert_path,
 * FS_ERR_MISMATCH when it is another key. */
FS_PKI_CHECK fs_status fs_pki_key_matches(const char *cert_path, const char *key_path);

/* Writes len bytes to path atomically with mode 0600 from creation on
 * (temporary file opened O_CREAT|O_EXCL, 0600; fsync; rename; fsync of the
 * folder). With exclusive != 0 an existing path is refused (FS_ERR_ARG) and
 * never replaced. */
fs_status fs_pki_write_private(const char *path, const void *buf, size_t len, int exclusive);

#endif
