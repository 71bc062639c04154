/*
 * cli/cmd_provision.c — `fedseg provision`: make a consortium folder (CA,
 * aggregator kit, one kit per site) or add sites to one. The work is done by
 * common/provision.c; this file parses options. Exit codes: 0 done, 1 refused
 * or failed (the reason printed), 2 bad usage. Tested by
 * tests/test_provision.sh.
 */
#include "cli/commands.h"
#include "common/log.h"
#include "common/pki.h"
#include "common/provision.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void provision_help(FILE *f)
{
    fprintf(f,
            "usage: fedseg provision --consortium NAME --aggregator HOST[:PORT] --sites A,B,... --out DIR\n"
            "       fedseg provision --out DIR --add-site NAME[,NAME...]\n\n"
            "Make a consortium's certificates and startup kits (mutual TLS between the\n"
            "aggregator and the sites), or add sites to an existing consortium without\n"
            "re-issuing anyone else's certificate.\n\n"
            "DIR receives:\n"
            "  ca/ca.crt, ca/ca.key         the consortium CA (EC P-256, 10 years); keep ca.key offline\n"
            "  aggregator/                  aggregator.crt|.key, ca.crt, aggregator.conf\n"
            "  sites/NAME/                  NAME.crt|.key, ca.crt, node.conf (edit its `data` line)\n"
            "  consortium.json              names, serials and SHA-256 fingerprints\n"
            "Private keys are written mode 0600, in folders of mode 0700.\n\n"
            "options:\n"
            "  --consortium NAME      consortium name (certificate organisation, SPIFFE trust domain)\n"
            "  --aggregator HOST[:P]  name or IP address the sites dial, and its port (default %d);\n"
            "                         IPv6 as [ADDR]:P\n"
            "  --sites A,B,...        site names; each becomes a certificate's common name\n"
            "  --out DIR              consortium folder: new or empty (or existing with --add-site)\n"
            "  --add-site A[,B...]    add sites to the consortium in DIR, signed by DIR/ca\n\n"
            "Names: 1-%d of A-Z a-z 0-9 _ . - , not starting with '.' or '-'; 'aggregator' is reserved.\n",
            FS_PROVISION_DEFAULT_PORT, FS_PKI_NAME_MAX);
}

/* Splits a comma list in place into names[] (at most cap). Returns the count,
 * or -1 (with a message) for an empty item or too many items. */
static int split_list(const char *opt, char *s, const char **names, int cap)
{
    int n = 0;
    for (char *item = s;; n++) {
        char *comma = strchr(item, ',');
        if (comma) *comma = 0;
        if (!*item) {
            fs_log_error("provision: %s has an empty name (a stray comma?)", opt);
            return -1;
        }
        if (n >= cap) {
            fs_log_error("provision: %s lists more than %d names", opt, cap);
            return -1;
        }
        names[n] = item;
        if (!comma) return n + 1;
        item = comma + 1;
    }
}

int fs_cmd_provision(int argc, char **argv)
{
    static const struct option opts[] = {
        {"consortium", required_argument, 0, 'c'}, {"aggregator", required_argument, 0, 'a'},
        {"sites", required_argument, 0, 's'},      {"out", required_argument, 0, 'o'},
        {"add-site", required_argument, 0, 'A'},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *consortium = NULL, *aggregator = NULL, *out = NULL;
    char *sites = NULL, *add = NULL;
    int c;
    optind = 1;
    opterr = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c': consortium = optarg; break;
        case 'a': aggregator = optarg; break;
        case 's': sites = optarg; break;
        case 'o': out = optarg; break;
        case 'A': add = optarg; break;
        case 'h': provision_help(stdout); return 0;
        default: provision_help(stderr); return 2;
        }
    }
    if (optind < argc) {
        fs_log_error("provision: unexpected argument '%s' (see fedseg provision --help)", argv[optind]);
        return 2;
    }
    if (!out) {
        fs_log_error("provision: --out DIR is required (see fedseg provision --help)");
        return 2;
    }
    if (add && (consortium || aggregator || sites)) {
        fs_log_error("provision: --add-site takes only --out (the consortium, aggregator and existing "
                     "sites are read from DIR/consortium.json)");
        return 2;
    }
    if (!add && (!consortium || !aggregator || !sites)) {
        fs_log_error("provision: --consortium, --aggregator and --sites are required to make a consortium "
                     "(or use --add-site to extend one)");
        return 2;
    }
    char *list = strdup(add ? add : sites);
    const char **names = calloc(FS_PROVISION_MAX_SITES, sizeof *names);
    if (!list || !names) {
        free(list);
        free(names);
        fs_log_error("provision: out of memory");
        return 1;
    }
    int n = split_list(add ? "--add-site" : "--sites", list, names, FS_PROVISION_MAX_SITES);
    fs_status s = FS_ERR_ARG;
    if (n > 0) {
        if (add) {
            s = fs_provision_add_sites(out, names, n);
        } else {
            fs_provision_opts o = {consortium, aggregator, names, n, out};
            s = fs_provision_create(&o);
        }
    }
    if (s == FS_OK) {
        if (add) {
            printf("added %d site%s to %s:", n, n == 1 ? "" : "s", out);
            for (int i = 0; i < n; i++) printf(" %s", names[i]);
            printf("\nsend each site its folder %s/sites/NAME; restart the aggregator to admit them\n", out);
        } else {
            printf("consortium %s: CA, aggregator kit and %d site kit%s in %s\n", consortium, n, n == 1 ? "" : "s",
                   out);
            printf("keep %s/ca/ca.key offline; send each site its folder %s/sites/NAME "
                   "and set `data` in its node.conf\n",
                   out, out);
        }
    }
    free(list);
    free(names);
    return s == FS_OK ? 0 : 1;
}
