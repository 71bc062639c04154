/*
 * common/provision.h — a consortium folder: its CA, the aggregator's startup
 * kit and one startup kit per site, made by `fedseg provision` (cli/
 * cmd_provision.c) and by anything else that needs fresh certificates (the
 * one-machine simulation). Certificates come from common/pki.h.
 *
 * Layout of DIR:
 *   consortium.json                 name, aggregator address, every certificate's
 *                                   serial and SHA-256 fingerprint
 *   ca/ca.crt, ca/ca.key            the consortium CA (key 0600; keep it offline)
 *   aggregator/aggregator.crt|.key  CN "aggregator", serverAuth, SAN DNS:HOST (or
 *                                   IP:HOST), DNS:localhost, IP:127.0.0.1
 *   aggregator/ca.crt               copy of the CA certificate
 *   aggregator/aggregator.conf      config for `fedseg aggregator --config`
 *   sites/<name>/<name>.crt|.key    CN <name>, O <consortium>, clientAuth, SAN
 *                                   URI spiffe://<consortium>/site/<name> (the
 *                                   trust domain <consortium> in lower case)
 *   sites/<name>/ca.crt             copy of the CA certificate
 *   sites/<name>/node.conf          config for `fedseg node --config`
 * Folders holding a private key are mode 0700, keys 0600. Config files use
 * `key = value` lines and `#` comment lines; their relative paths are relative
 * to the folder holding the config file, so a kit can be copied anywhere.
 *
 * Creation is all or nothing: the tree is built in a hidden sibling folder and
 * renamed to DIR at the end. Adding a site never reads or rewrites another
 * party's key or certificate: it signs one new certificate with the CA and
 * rewrites only consortium.json and aggregator/aggregator.conf (atomically).
 *
 * Tested by tests/test_provision.sh (and tests/test_pki.c for pki.h).
 */
#ifndef FS_PROVISION_H
#define FS_PROVISION_H

#include <stddef.h>
#include "kernels/status.h"

#define FS_PROVISION_DEFAULT_PORT 50051
#define FS_PROVISION_MAX_SITES 1024

typedef struct {
    const char *consortium;          /* name, see fs_pki_name_ok              */
    const char *aggregator;          /* HOST, HOST:PORT, [IPv6] or [IPv6]:PORT */
    const char *const *sites;        /* site names                            */
    int nsites;
    const char *out_dir;             /* absent, or an empty folder            */
} fs_provision_opts;

/* Splits an aggregator address into host (without brackets) and port
 * (FS_PROVISION_DEFAULT_PORT when absent); *is_ip is 1 for an IPv4 or IPv6
 * literal. The host must be an IP literal or a DNS name (letters, digits,
 * '-', '.'; at most 253 characters). FS_ERR_ARG, with a message, otherwise. */
fs_status fs_provision_parse_address(const char *spec, char *host, size_t cap, int *port, int *is_ip);

/* Makes a new consortium folder. Refuses (FS_ERR_ARG, nothing written) an
 * invalid or duplicated name, a site named "aggregator", and an out_dir that
 * exists and is not an empty folder (one holding a consortium gets a hint to
 * use --add-site). On failure no trace of the new tree is left. */
fs_status fs_provision_create(const fs_provision_opts *o);

/* Adds sites to an existing consortium folder: signs their certificates with
 * DIR/ca, writes their kits, appends them to consortium.json and to the
 * `sites` line of aggregator/aggregator.conf. Refuses (nothing written) a
 * folder without a consortium or without its CA (FS_ERR_NOT_FOUND), an
 * invalid name or one already present (FS_ERR_ARG). */
fs_status fs_provision_add_sites(const char *out_dir, const char *const *sites, int nsites);

#endif
