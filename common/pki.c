/*
 * common/pki.c — see pki.h. Layout: file helpers (exclusive atomic writes,
 * bounded reads that wipe), OpenSSL error reporting, key and certificate
 * construction (CA, leaf), then the read-only checks (CN, info, verify, key
 * match). Only libcrypto is used; nothing here touches the network.
 * Tested by tests/test_pki.c and tests/test_provision.sh.
 */
#include "common/pki.h"
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define PKI_MAX_FILE (64 * 1024) /* a PEM key or certificate is far smaller */

struct fs_pki_ca {
    X509 *cert;
    EVP_PKEY *key;
};

/* ---- OpenSSL errors ------------------------------------------------------ */

/* Logs "PATH: WHAT: <first OpenSSL reason>" and empties OpenSSL's error queue. */
static void ssl_fail(const char *path, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[256] = "";
    if (e) ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    fs_log_error("%s: %s%s%s", path ? path : "(memory)", what, buf[0] ? ": " : "", buf);
}

/* ---- files --------------------------------------------------------------- */

/* fsyncs the folder holding path, so a rename or link in it is durable. */
static void sync_parent(const char *path)
{
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        size_t n = (size_t)(slash - path);
        if (n >= sizeof dir) return;
        memcpy(dir, path, n);
        dir[n] = 0;
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/*
 * Writes buf to path through a temporary file in the same folder created
 * O_CREAT|O_EXCL with `mode` (then fchmod'ed to exactly `mode`, whatever the
 * umask), fsync'ed, and moved into place: with exclusive, by link() (which
 * refuses an existing path, so nothing is ever replaced), else by rename().
 * On any failure the temporary file is removed and path is untouched.
 */
static fs_status write_file(const char *path, const void *buf, size_t len, mode_t mode, int exclusive)
{
    char tmp[4096];
    const char *slash = strrchr(path, '/');
    int dirlen = slash ? (int)(slash - path + 1) : 0;
    if (snprintf(tmp, sizeof tmp, "%.*s.%s.tmp.%ld", dirlen, path, path + dirlen, (long)getpid()) >=
        (int)sizeof tmp) {
        fs_log_error("%s: path too long", path);
        return FS_ERR_ARG;
    }
    if (exclusive && access(path, F_OK) == 0) {
        fs_log_error("%s: already exists; refusing to replace it", path);
        return FS_ERR_ARG;
    }
    unlink(tmp); /* a leftover of a crashed run with our pid; O_EXCL below */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        fs_log_error("%s: cannot create temporary file: %s", tmp, strerror(errno));
        return FS_ERR_IO;
    }
    int err = 0;
    if (fchmod(fd, mode) != 0) err = errno;
    const unsigned char *p = buf;
    size_t left = len;
    while (!err && left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            if (errno == EINTR) continue;
            err = errno;
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    if (!err && fsync(fd) != 0) err = errno;
    if (close(fd) != 0 && !err) err = errno;
    if (!err) {
        if (exclusive) {
            if (link(tmp, path) != 0) err = errno;
            unlink(tmp);
        } else if (rename(tmp, path) != 0) {
            err = errno;
        }
    }
    if (err) {
        unlink(tmp);
        if (err == EEXIST)
            fs_log_error("%s: already exists; refusing to replace it", path);
        else
            fs_log_error("%s: could not be written: %s", path, strerror(err));
        return err == EEXIST ? FS_ERR_ARG : FS_ERR_IO;
    }
    sync_parent(path);
    return FS_OK;
}

fs_status fs_pki_write_private(const char *path, const void *buf, size_t len, int exclusive)
{
    return write_file(path, buf, len, 0600, exclusive);
}

/*
 * Reads a whole small file into a new buffer (*out, *len; NUL-terminated,
 * caller frees with OPENSSL_clear_free(*out, *len + 1) when it may hold a
 * secret). Missing file: FS_ERR_NOT_FOUND; over PKI_MAX_FILE: FS_ERR_FORMAT.
 */
static fs_status read_small(const char *path, char **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        fs_log_error("%s: cannot open: %s", path, strerror(e));
        return e == ENOENT ? FS_ERR_NOT_FOUND : FS_ERR_IO;
    }
    char *buf = OPENSSL_malloc(PKI_MAX_FILE + 1);
    if (!buf) {
        close(fd);
        return FS_ERR_NOMEM;
    }
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, PKI_MAX_FILE + 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            fs_log_error("%s: read failed: %s", path, strerror(errno));
            close(fd);
            OPENSSL_clear_free(buf, PKI_MAX_FILE + 1);
            return FS_ERR_IO;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n > PKI_MAX_FILE) {
            fs_log_error("%s: larger than %d bytes, not a PEM key or certificate", path, PKI_MAX_FILE);
            close(fd);
            OPENSSL_clear_free(buf, PKI_MAX_FILE + 1);
            return FS_ERR_FORMAT;
        }
    }
    close(fd);
    buf[n] = 0;
    *out = buf;
    *len = n;
    return FS_OK;
}

/* Reads the first PEM certificate of a file. */
static fs_status load_cert(const char *path, X509 **out)
{
    *out = NULL;
    char *buf;
    size_t len;
    FS_TRY(read_small(path, &buf, &len));
    BIO *b = BIO_new_mem_buf(buf, (int)len);
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    OPENSSL_free(buf);
    if (!x) {
        ssl_fail(path, "not a PEM certificate");
        return FS_ERR_FORMAT;
    }
    *out = x;
    return FS_OK;
}

/* Reads a PEM private key; the file's bytes are wiped from our buffer. */
static fs_status load_key(const char *path, EVP_PKEY **out)
{
    *out = NULL;
    char *buf;
    size_t len;
    FS_TRY(read_small(path, &buf, &len));
    BIO *b = BIO_new_mem_buf(buf, (int)len);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    OPENSSL_clear_free(buf, PKI_MAX_FILE + 1);
    if (!k) {
        ssl_fail(path, "not an unencrypted PEM private key");
        return FS_ERR_FORMAT;
    }
    *out = k;
    return FS_OK;
}

/* PEM-encodes a private key (PKCS#8) into secure memory and writes it 0600;
 * the encoded bytes are wiped when the BIO is freed. */
static fs_status write_key(const char *path, EVP_PKEY *k)
{
    BIO *b = BIO_new(BIO_s_secmem());
    if (!b || !PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL)) {
        BIO_free(b);
        ssl_fail(path, "cannot encode the private key");
        return FS_ERR_NOMEM;
    }
    char *data;
    long n = BIO_get_mem_data(b, &data);
    fs_status s = write_file(path, data, (size_t)n, 0600, 1);
    BIO_free(b);
    return s;
}

/* Writes a certificate as PEM, mode 0644, never replacing an existing file. */
static fs_status write_cert(const char *path, X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (!b || !PEM_write_bio_X509(b, x)) {
        BIO_free(b);
        ssl_fail(path, "cannot encode the certificate");
        return FS_ERR_NOMEM;
    }
    char *data;
    long n = BIO_get_mem_data(b, &data);
    fs_status s = write_file(path, data, (size_t)n, 0644, 1);
    BIO_free(b);
    return s;
}

/* ---- construction -------------------------------------------------------- */

int fs_pki_name_ok(const char *name)
{
    if (!name || !name[0] || name[0] == '.' || name[0] == '-') return 0;
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        char c = *p;
        int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '.' || c == '-';
        if (!ok || n >= FS_PKI_NAME_MAX) return 0;
    }
    return 1;
}

static EVP_PKEY *new_p256(void)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!k) ssl_fail(NULL, "EC P-256 key generation failed");
    return k;
}

/* A random positive serial of 127 bits (16 octets, top bit clear, non-zero). */
static int set_random_serial(X509 *x)
{
    unsigned char b[16];
    do {
        if (RAND_bytes(b, sizeof b) != 1) return 0;
        b[0] &= 0x7f;
    } while (b[0] == 0 && b[1] == 0); /* keep it long: at least 15 octets */
    BIGNUM *bn = BN_bin2bn(b, sizeof b, NULL);
    ASN1_INTEGER *ai = bn ? BN_to_ASN1_INTEGER(bn, NULL) : NULL;
    int ok = ai && X509_set_serialNumber(x, ai);
    ASN1_INTEGER_free(ai);
    BN_free(bn);
    return ok;
}

/* Adds one extension given in OpenSSL's configuration syntax. */
static int add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    if (!e) return 0;
    int ok = X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok;
}

/* Builds the subjectAltName from "DNS:x" / "IP:x" / "URI:x" entries. Values
 * go in as single GeneralNames, so a comma or other syntax in one entry can
 * never smuggle in another name. */
static int add_san(X509 *x, const fs_pki_leaf *req)
{
    if (req->nsan <= 0) return 1;
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    if (!gens) return 0;
    int ok = 1;
    for (int i = 0; ok && i < req->nsan; i++) {
        const char *s = req->san[i];
        int type;
        const char *v;
        if (!strncmp(s, "DNS:", 4)) type = GEN_DNS, v = s + 4;
        else if (!strncmp(s, "IP:", 3)) type = GEN_IPADD, v = s + 3;
        else if (!strncmp(s, "URI:", 4)) type = GEN_URI, v = s + 4;
        else {
            fs_log_error("subjectAltName entry '%s' is not DNS:, IP: or URI:", s);
            ok = 0;
            break;
        }
        GENERAL_NAME *g = a2i_GENERAL_NAME(NULL, NULL, NULL, type, v, 0);
        if (!g || !sk_GENERAL_NAME_push(gens, g)) {
            GENERAL_NAME_free(g);
            fs_log_error("subjectAltName entry '%s' is not valid", s);
            ok = 0;
        }
    }
    if (ok) ok = X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_DEFAULT) == 1;
    sk_GENERAL_NAME_pop_free(gens, GENERAL_NAME_free);
    return ok;
}

/* Subject "CN=cn, O=org". */
static int set_subject(X509 *x, const char *cn, const char *org)
{
    X509_NAME *n = X509_get_subject_name(x);
    return X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const unsigned char *)org, -1, -1, 0) &&
           X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
}

/* "YYYY-MM-DDTHH:MM:SSZ" of an ASN1_TIME. */
static void time_str(const ASN1_TIME *t, char out[24])
{
    struct tm tm;
    if (ASN1_TIME_to_tm(t, &tm) != 1 || !strftime(out, 24, "%Y-%m-%dT%H:%M:%SZ", &tm)) strcpy(out, "?");
}

/* Serial, SHA-256 fingerprint, CN and end of validity of a certificate. */
static fs_status info_of(X509 *x, fs_pki_cert_info *info)
{
    memset(info, 0, sizeof *info);
    X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, info->cn, sizeof info->cn);
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    unsigned char sb[64];
    int n = bn ? BN_bn2bin(bn, sb) : -1;
    BN_free(bn);
    if (n < 0 || n > 20) return FS_ERR_FORMAT;
    if (n == 0) strcpy(info->serial, "00");
    for (int i = 0; i < n; i++) sprintf(info->serial + 2 * i, "%02X", sb[i]);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!X509_digest(x, EVP_sha256(), md, &mdlen) || mdlen != 32) return FS_ERR_FORMAT;
    for (unsigned i = 0; i < mdlen; i++) sprintf(info->sha256 + 3 * i, i + 1 < mdlen ? "%02X:" : "%02X", md[i]);
    time_str(X509_get0_notAfter(x), info->not_after);
    return FS_OK;
}

/* Refuses (FS_ERR_ARG) when either output file already exists. */
static fs_status check_absent(const char *cert_path, const char *key_path)
{
    const char *p[2] = {cert_path, key_path};
    for (int i = 0; i < 2; i++)
        if (access(p[i], F_OK) == 0) {
            fs_log_error("%s: already exists; refusing to replace it", p[i]);
            return FS_ERR_ARG;
        }
    return FS_OK;
}

/* Writes key then certificate; if the certificate cannot be written, the key
 * just written is removed again so no half pair is left behind. */
static fs_status write_pair(X509 *x, EVP_PKEY *k, const char *cert_path, const char *key_path)
{
    FS_TRY(write_key(key_path, k));
    fs_status s = write_cert(cert_path, x);
    if (s != FS_OK) unlink(key_path);
    return s;
}

fs_status fs_pki_ca_create(const char *consortium, int days, const char *cert_path,
                           const char *key_path, fs_pki_ca **out, fs_pki_cert_info *info)
{
    if (out) *out = NULL;
    if (!fs_pki_name_ok(consortium)) {
        fs_log_error("consortium name '%s' is invalid (1-%d of A-Z a-z 0-9 _ . -)", consortium ? consortium : "",
                     FS_PKI_NAME_MAX);
        return FS_ERR_ARG;
    }
    FS_TRY(check_absent(cert_path, key_path));
    if (days <= 0) days = FS_PKI_CA_DAYS;
    char cn[FS_PKI_NAME_MAX + 8];
    snprintf(cn, sizeof cn, "%s CA", consortium);
    if (strlen(cn) > 64) snprintf(cn, sizeof cn, "fedseg consortium CA"); /* ub-common-name */
    EVP_PKEY *k = new_p256();
    X509 *x = X509_new();
    fs_status s = FS_ERR_NOMEM;
    if (!k || !x) goto done;
    X509V3_CTX ctx;
    int ok = X509_set_version(x, X509_VERSION_3) && set_random_serial(x) && set_subject(x, cn, consortium) &&
             X509_set_issuer_name(x, X509_get_subject_name(x)) &&
             X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
             X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) && X509_set_pubkey(x, k);
    if (ok) {
        X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
        ok = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
             add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign") &&
             add_ext(x, &ctx, NID_subject_key_identifier, "hash") &&
             add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") &&
             X509_sign(x, k, EVP_sha256()) > 0;
    }
    if (!ok) {
        ssl_fail(cert_path, "cannot build the CA certificate");
        s = FS_ERR_FORMAT;
        goto done;
    }
    if (info && (s = info_of(x, info)) != FS_OK) goto done;
    if ((s = write_pair(x, k, cert_path, key_path)) != FS_OK) goto done;
    if (out) {
        fs_pki_ca *ca = calloc(1, sizeof *ca);
        if (!ca) {
            s = FS_ERR_NOMEM;
            goto done;
        }
        ca->cert = x;
        ca->key = k;
        *out = ca;
        return FS_OK;
    }
    s = FS_OK;
done:
    X509_free(x);
    EVP_PKEY_free(k); /* EVP_PKEY_free wipes the EC private scalar */
    return s;
}

fs_status fs_pki_ca_load(const char *cert_path, const char *key_path, fs_pki_ca **out)
{
    *out = NULL;
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    FS_TRY(load_cert(cert_path, &x));
    fs_status s;
    if (X509_check_ca(x) < 1) {
        fs_log_error("%s: is not a CA certificate", cert_path);
        s = FS_ERR_MISMATCH;
        goto fail;
    }
    struct stat st;
    if (stat(key_path, &st) == 0 && (st.st_mode & 077))
        fs_log_warn("%s: readable by group or others (mode %03o); it should be 0600", key_path,
                    (unsigned)(st.st_mode & 0777));
    if ((s = load_key(key_path, &k)) != FS_OK) goto fail;
    if (X509_check_private_key(x, k) != 1) {
        ERR_clear_error();
        fs_log_error("%s: is not the private key of %s", key_path, cert_path);
        s = FS_ERR_MISMATCH;
        goto fail;
    }
    fs_pki_ca *ca = calloc(1, sizeof *ca);
    if (!ca) {
        s = FS_ERR_NOMEM;
        goto fail;
    }
    ca->cert = x;
    ca->key = k;
    *out = ca;
    return FS_OK;
fail:
    X509_free(x);
    EVP_PKEY_free(k);
    return s;
}

void fs_pki_ca_free(fs_pki_ca *ca)
{
    if (!ca) return;
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key);
    OPENSSL_cleanse(ca, sizeof *ca);
    free(ca);
}

fs_status fs_pki_issue(const fs_pki_ca *ca, const fs_pki_leaf *req, const char *cert_path,
                       const char *key_path, fs_pki_cert_info *info)
{
    if (!ca || !req || !req->cn || !req->org || req->nsan < 0 || req->nsan > FS_PKI_MAX_SAN ||
        (req->role != FS_PKI_SERVER && req->role != FS_PKI_CLIENT))
        return FS_ERR_ARG;
    if (strlen(req->cn) > FS_PKI_NAME_MAX || strlen(req->org) > FS_PKI_NAME_MAX) {
        fs_log_error("certificate name '%s' / '%s' longer than %d characters", req->cn, req->org, FS_PKI_NAME_MAX);
        return FS_ERR_ARG;
    }
    FS_TRY(check_absent(cert_path, key_path));
    int days = req->days > 0 ? req->days : FS_PKI_LEAF_DAYS;
    EVP_PKEY *k = new_p256();
    X509 *x = X509_new();
    fs_status s = FS_ERR_NOMEM;
    if (!k || !x) goto done;
    X509V3_CTX ctx;
    int ok = X509_set_version(x, X509_VERSION_3) && set_random_serial(x) && set_subject(x, req->cn, req->org) &&
             X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) &&
             X509_gmtime_adj(X509_getm_notBefore(x), -3600) &&
             X509_time_adj_ex(X509_getm_notAfter(x), days, 0, NULL) && X509_set_pubkey(x, k);
    /* never outlive the CA: a chain with an expired CA fails anyway */
    if (ok && ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(ca->cert)) > 0)
        ok = X509_set1_notAfter(x, X509_get0_notAfter(ca->cert));
    if (ok) {
        X509V3_set_ctx(&ctx, ca->cert, x, NULL, NULL, 0);
        ok = add_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE") &&
             add_ext(x, &ctx, NID_key_usage, "critical,digitalSignature") &&
             add_ext(x, &ctx, NID_ext_key_usage, req->role == FS_PKI_SERVER ? "serverAuth" : "clientAuth") &&
             add_ext(x, &ctx, NID_subject_key_identifier, "hash") &&
             add_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") && add_san(x, req) &&
             X509_sign(x, ca->key, EVP_sha256()) > 0;
    }
    if (!ok) {
        ssl_fail(cert_path, "cannot build the certificate");
        s = FS_ERR_FORMAT;
        goto done;
    }
    if (info && (s = info_of(x, info)) != FS_OK) goto done;
    s = write_pair(x, k, cert_path, key_path);
done:
    X509_free(x);
    EVP_PKEY_free(k);
    return s;
}

/* ---- checks -------------------------------------------------------------- */

fs_status fs_pki_cert_info_read(const char *cert_path, fs_pki_cert_info *info)
{
    X509 *x;
    FS_TRY(load_cert(cert_path, &x));
    fs_status s = info_of(x, info);
    X509_free(x);
    if (s != FS_OK) fs_log_error("%s: malformed serial or digest", cert_path);
    return s;
}

fs_status fs_pki_cert_cn(const char *cert_path, char *cn, size_t cap)
{
    if (!cn || cap == 0) return FS_ERR_ARG;
    cn[0] = 0;
    X509 *x;
    FS_TRY(load_cert(cert_path, &x));
    X509_NAME *n = X509_get_subject_name(x);
    int idx = X509_NAME_get_index_by_NID(n, NID_commonName, -1);
    fs_status s = FS_OK;
    if (idx < 0) {
        fs_log_error("%s: certificate has no common name", cert_path);
        s = FS_ERR_FORMAT;
    } else {
        unsigned char *utf8 = NULL;
        int len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, idx)));
        if (len < 0) {
            ssl_fail(cert_path, "unreadable common name");
            s = FS_ERR_FORMAT;
        } else if ((size_t)len >= cap || memchr(utf8, 0, (size_t)len)) {
            fs_log_error("%s: common name does not fit (or holds a NUL byte)", cert_path);
            s = FS_ERR_ARG;
        } else {
            memcpy(cn, utf8, (size_t)len);
            cn[len] = 0;
        }
        OPENSSL_free(utf8);
    }
    X509_free(x);
    return s;
}

fs_status fs_pki_verify(const char *ca_path, const char *cert_path)
{
    X509 *ca = NULL, *x = NULL;
    FS_TRY(load_cert(ca_path, &ca));
    fs_status s = load_cert(cert_path, &x);
    if (s != FS_OK) {
        X509_free(ca);
        return s;
    }
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    s = FS_ERR_NOMEM;
    if (store && ctx && X509_STORE_add_cert(store, ca) == 1 && X509_STORE_CTX_init(ctx, store, x, NULL) == 1) {
        X509_STORE_CTX_set_flags(ctx, X509_V_FLAG_X509_STRICT);
        if (X509_verify_cert(ctx) == 1) {
            s = FS_OK;
        } else {
            int e = X509_STORE_CTX_get_error(ctx);
            fs_log_error("%s: does not verify against %s: %s", cert_path, ca_path,
                         X509_verify_cert_error_string(e));
            s = FS_ERR_MISMATCH;
        }
    }
    ERR_clear_error();
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    X509_free(x);
    X509_free(ca);
    return s;
}

fs_status fs_pki_key_matches(const char *cert_path, const char *key_path)
{
    X509 *x;
    EVP_PKEY *k;
    FS_TRY(load_cert(cert_path, &x));
    fs_status s = load_key(key_path, &k);
    if (s != FS_OK) {
        X509_free(x);
        return s;
    }
    s = X509_check_private_key(x, k) == 1 ? FS_OK : FS_ERR_MISMATCH;
    ERR_clear_error();
    if (s != FS_OK) fs_log_error("%s: is not the private key of %s", key_path, cert_path);
    EVP_PKEY_free(k);
    X509_free(x);
    return s;
}
