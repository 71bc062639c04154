/*
 * tests/test_pki.c — common/pki.h without the CLI: name rules (edges 0, 1, 63,
 * 64 characters, '.', '..', separators); two independent CAs; a site
 * certificate chains to its own CA and not to the other, nor after one byte of
 * it is changed; CN read back; key/certificate match and mismatch; keys mode
 * 0600 even under umask 0; existing files are never replaced (and stay
 * byte-identical); a bad subjectAltName writes nothing; a CA whose key is
 * another's, or a leaf posing as a CA, is refused; serials differ and are
 * 16 octets; fingerprints have the openssl layout; exclusive private writes.
 */
#include "check.h"
#include "common/log.h"
#include "common/pki.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[] = "/tmp/fs_pki_XXXXXX";
static char pbuf[8][4096];
static int pnext;

/* dir/name in one of a few rotating buffers. */
static const char *P(const char *name)
{
    char *b = pbuf[pnext++ % 8];
    snprintf(b, 4096, "%s/%s", dir, name);
    return b;
}

static long slurp(const char *path, char *buf, long cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    long n = (long)fread(buf, 1, (size_t)cap, f);
    fclose(f);
    return n;
}

static int same_bytes(const char *a, const char *b)
{
    static char x[70000], y[70000];
    long n = slurp(a, x, sizeof x), m = slurp(b, y, sizeof y);
    return n >= 0 && n == m && !memcmp(x, y, (size_t)n);
}

static unsigned mode_of(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (unsigned)(st.st_mode & 0777) : 01000;
}

static void test_names(void)
{
    char s65[66];
    memset(s65, 'a', 65);
    s65[64] = 0; /* 64 characters: one more than the wire protocol carries */
    CHECK(fs_pki_name_ok("a"), "one character");
    CHECK(fs_pki_name_ok("site_1.Hosp-A"), "letters digits _ . -");
    CHECK(!fs_pki_name_ok(s65), "64 characters accepted");
    s65[63] = 0;
    CHECK(fs_pki_name_ok(s65), "63 characters refused");
    const char *bad[] = {"", ".", "..", ".hidden", "-x", "a/b", "a b", "a,b", "a:b", "caf\xc3\xa9", "a\nb"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) CHECK(!fs_pki_name_ok(bad[i]), "accepted '%s'", bad[i]);
    CHECK(!fs_pki_name_ok(NULL), "NULL accepted");
}

static int hexlen_ok(const char *s)
{
    size_t n = strlen(s);
    if (n != 30 && n != 32) return 0;
    for (size_t i = 0; i < n; i++)
        if (!strchr("0123456789ABCDEF", s[i])) return 0;
    return 1;
}

int main(void)
{
    fs_log_set_level(FS_LOG_QUIET);
    if (!mkdtemp(dir)) return 1;
    umask(0); /* keys must still come out 0600 */
    test_names();

    fs_pki_ca *ca1 = NULL, *ca2 = NULL;
    fs_pki_cert_info ci1, ci2, info;
    CHECK(fs_pki_ca_create("cons1", 0, P("ca1.crt"), P("ca1.key"), &ca1, &ci1) == FS_OK, "CA 1");
    CHECK(fs_pki_ca_create("cons2", 0, P("ca2.crt"), P("ca2.key"), &ca2, &ci2) == FS_OK, "CA 2");
    if (!ca1 || !ca2) return check_result();
    CHECK(mode_of(P("ca1.key")) == 0600, "CA key mode %o", mode_of(P("ca1.key")));
    CHECK(!strcmp(ci1.cn, "cons1 CA"), "CA CN '%s'", ci1.cn);
    CHECK(hexlen_ok(ci1.serial) && hexlen_ok(ci2.serial), "serial layout %s %s", ci1.serial, ci2.serial);
    CHECK(strcmp(ci1.serial, ci2.serial) != 0, "two CAs share a serial");
    CHECK(strlen(ci1.sha256) == 95 && ci1.sha256[2] == ':', "fingerprint layout %s", ci1.sha256);
    CHECK(fs_pki_verify(P("ca1.crt"), P("ca1.crt")) == FS_OK, "a CA verifies against itself");
    CHECK(fs_pki_ca_create("cons1", 0, P("ca1.crt"), P("ca1x.key"), NULL, NULL) == FS_ERR_ARG,
          "CA create over an existing certificate");
    CHECK(access(P("ca1x.key"), F_OK) != 0, "a refused CA create left a key");
    CHECK(fs_pki_ca_create("bad name", 0, P("cax.crt"), P("cax.key"), NULL, NULL) == FS_ERR_ARG, "bad CA name");

    /* a site certificate */
    fs_pki_leaf site = {.role = FS_PKI_CLIENT, .cn = "site_1", .org = "cons1",
                        .san = {"URI:spiffe://cons1/site/site_1"}, .nsan = 1};
    CHECK(fs_pki_issue(ca1, &site, P("s1.crt"), P("s1.key"), &info) == FS_OK, "issue site_1");
    CHECK(mode_of(P("s1.key")) == 0600, "site key mode %o under umask 0", mode_of(P("s1.key")));
    CHECK(mode_of(P("s1.crt")) == 0644, "site cert mode %o", mode_of(P("s1.crt")));
    CHECK(!strcmp(info.cn, "site_1"), "info CN '%s'", info.cn);
    char cn[65];
    CHECK(fs_pki_cert_cn(P("s1.crt"), cn, sizeof cn) == FS_OK && !strcmp(cn, "site_1"), "CN read back '%s'", cn);
    char tiny[4];
    CHECK(fs_pki_cert_cn(P("s1.crt"), tiny, sizeof tiny) == FS_ERR_ARG, "CN into a too-small buffer");
    fs_pki_cert_info back;
    CHECK(fs_pki_cert_info_read(P("s1.crt"), &back) == FS_OK && !strcmp(back.serial, info.serial) &&
              !strcmp(back.sha256, info.sha256) && !strcmp(back.not_after, info.not_after),
          "info read back differs");
    CHECK(strcmp(info.not_after, ci1.not_after) <= 0, "leaf outlives its CA: %s > %s", info.not_after, ci1.not_after);
    CHECK(fs_pki_verify(P("ca1.crt"), P("s1.crt")) == FS_OK, "site_1 does not verify against its CA");
    CHECK(fs_pki_verify(P("ca2.crt"), P("s1.crt")) == FS_ERR_MISMATCH, "site_1 verifies against another CA");
    CHECK(fs_pki_key_matches(P("s1.crt"), P("s1.key")) == FS_OK, "site_1 key does not match");
    CHECK(fs_pki_key_matches(P("s1.crt"), P("ca1.key")) == FS_ERR_MISMATCH, "the CA key matches site_1");

    /* a server certificate, another CA's leaf */
    fs_pki_leaf agg = {.role = FS_PKI_SERVER, .cn = "aggregator", .org = "cons2",
                       .san = {"DNS:agg.example", "DNS:localhost", "IP:127.0.0.1", "IP:::1"}, .nsan = 4};
    CHECK(fs_pki_issue(ca2, &agg, P("a2.crt"), P("a2.key"), NULL) == FS_OK, "issue aggregator");
    CHECK(fs_pki_verify(P("ca2.crt"), P("a2.crt")) == FS_OK, "aggregator does not verify");
    CHECK(fs_pki_verify(P("ca1.crt"), P("a2.crt")) == FS_ERR_MISMATCH, "aggregator verifies against CA 1");
    CHECK(fs_pki_issue(ca1, &site, P("s1b.crt"), P("s1b.key"), &back) == FS_OK, "issue site_1 again");
    CHECK(strcmp(back.serial, info.serial) != 0, "same serial twice");
    CHECK(fs_pki_key_matches(P("s1.crt"), P("s1b.key")) == FS_ERR_MISMATCH, "two issues share a key");

    /* existing files are never replaced */
    CHECK(fs_pki_issue(ca1, &site, P("s1.crt"), P("new.key"), NULL) == FS_ERR_ARG, "issue over existing cert");
    CHECK(fs_pki_issue(ca1, &site, P("new.crt"), P("s1.key"), NULL) == FS_ERR_ARG, "issue over existing key");
    CHECK(access(P("new.key"), F_OK) != 0 && access(P("new.crt"), F_OK) != 0, "refused issue wrote a file");
    CHECK(fs_pki_key_matches(P("s1.crt"), P("s1.key")) == FS_OK, "a refused issue changed site_1's pair");

    /* a malformed subjectAltName writes nothing */
    fs_pki_leaf badsan = site;
    badsan.san[0] = "EMAIL:x@y";
    CHECK(fs_pki_issue(ca1, &badsan, P("bs.crt"), P("bs.key"), NULL) != FS_OK, "bad SAN accepted");
    badsan.san[0] = "IP:not-an-ip";
    CHECK(fs_pki_issue(ca1, &badsan, P("bs.crt"), P("bs.key"), NULL) != FS_OK, "bad IP accepted");
    CHECK(access(P("bs.key"), F_OK) != 0 && access(P("bs.crt"), F_OK) != 0, "a failed issue left files");

    /* a changed byte in the certificate body: never verifies */
    char pem[8192];
    long n = slurp(P("s1.crt"), pem, sizeof pem);
    CHECK(n > 200, "read site cert");
    if (n > 200) {
        long at = n / 2;
        pem[at] = pem[at] == 'A' ? 'B' : 'A';
        FILE *f = fopen(P("tampered.crt"), "wb");
        fwrite(pem, 1, (size_t)n, f);
        fclose(f);
        CHECK(fs_pki_verify(P("ca1.crt"), P("tampered.crt")) != FS_OK, "a tampered certificate verifies");
    }
    CHECK(fs_pki_verify(P("ca1.crt"), P("missing.crt")) == FS_ERR_NOT_FOUND, "missing certificate");
    CHECK(fs_pki_cert_cn(P("s1.key"), cn, sizeof cn) == FS_ERR_FORMAT, "a key read as a certificate");

    /* loading a CA */
    fs_pki_ca *ld = NULL;
    CHECK(fs_pki_ca_load(P("ca1.crt"), P("ca1.key"), &ld) == FS_OK && ld, "load CA 1");
    if (ld) {
        fs_pki_leaf s2 = site;
        s2.cn = "site_2";
        CHECK(fs_pki_issue(ld, &s2, P("s2.crt"), P("s2.key"), NULL) == FS_OK, "issue with a loaded CA");
        CHECK(fs_pki_verify(P("ca1.crt"), P("s2.crt")) == FS_OK, "loaded CA's leaf does not verify");
    }
    fs_pki_ca_free(ld);
    ld = NULL;
    CHECK(fs_pki_ca_load(P("ca1.crt"), P("ca2.key"), &ld) == FS_ERR_MISMATCH && !ld, "CA with another's key");
    CHECK(fs_pki_ca_load(P("s1.crt"), P("s1.key"), &ld) == FS_ERR_MISMATCH && !ld, "a leaf loaded as a CA");
    CHECK(fs_pki_ca_load(P("ca1.crt"), P("nokey"), &ld) == FS_ERR_NOT_FOUND && !ld, "CA without its key");

    /* exclusive private writes */
    CHECK(fs_pki_write_private(P("secret"), "abc", 3, 1) == FS_OK, "write secret");
    CHECK(mode_of(P("secret")) == 0600, "secret mode %o", mode_of(P("secret")));
    CHECK(fs_pki_write_private(P("secret"), "xyz", 3, 1) == FS_ERR_ARG, "exclusive write replaced a file");
    CHECK(fs_pki_write_private(P("copy"), "abc", 3, 1) == FS_OK && same_bytes(P("secret"), P("copy")),
          "refused write changed the file");
    CHECK(fs_pki_write_private(P("secret"), "", 0, 0) == FS_OK, "non-exclusive replace, length 0");
    char one[2];
    CHECK(slurp(P("secret"), one, 2) == 0, "length 0 file not empty");

    fs_pki_ca_free(ca1);
    fs_pki_ca_free(ca2);
    fs_pki_ca_free(NULL);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return check_result();
}
