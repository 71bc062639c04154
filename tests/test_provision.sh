#!/bin/sh
# tests/test_provision.sh — `fedseg provision`, cross-checked with the openssl CLI:
#   - 3 sites (under umask 000): every certificate verifies against its CA and
#     fails against a second consortium's CA; every key file is mode 0600 and
#     every key folder 0700; each key matches its certificate (public keys
#     compared); CNs, O, SANs, EKUs, CA basicConstraints/keyUsage as specified;
#     consortium.json records each serial and SHA-256 fingerprint as openssl
#     prints them; the configs carry every documented key, comments and the
#     site list; an IP literal aggregator gets an IP SAN;
#   - --add-site: every other file is byte-identical afterwards, consortium.json
#     and aggregator.conf only gain the new site, the new certificate verifies;
#   - refusals exit non-zero with a message and change nothing: an existing
#     consortium without --add-site, a non-empty folder, a site already
#     present, invalid / reserved / repeated names, a bad address, a missing CA
#     key or another consortium's, a corrupt consortium.json, a folder without
#     a consortium, a folder locked by another provisioner (flock(1)).
# Needs FS_FEDSEG (set by tests/provision.cmake) and the openssl CLI (skips
# without it).
set -u
FEDSEG=${FS_FEDSEG:?FS_FEDSEG is not set}
command -v openssl > /dev/null || { echo "SKIP: openssl CLI not installed"; exit 77; }
T=$(mktemp -d "${TMPDIR:-/tmp}/fs_provision_test.XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
fail=0
bad() { echo "FAIL: $*"; fail=1; }

mode() { stat -c %a "$1"; }
# text of one certificate extension (or the subject) as openssl prints it
ext() { openssl x509 -in "$1" -noout -ext "$2" 2> /dev/null | tail -n +2 | sed 's/^ *//'; }
subj() { openssl x509 -in "$1" -noout -subject -nameopt RFC2253 | sed 's/^subject=//'; }
# snapshot: "sha256  path" of every file under a folder, sorted
snapshot() { (cd "$1" && find . -type f -exec sha256sum {} + | sort -k2); }

"$FEDSEG" provision --help > "$T/help" 2>&1 || bad "--help exit code"
grep -q -- "--add-site" "$T/help" || bad "--help does not describe --add-site"

C="$T/c"
(umask 000 && "$FEDSEG" provision --consortium brainnet --aggregator agg.example.org:7443 \
    --sites site_1,site_2,site_3 --out "$C") > "$T/out" 2>&1 || { cat "$T/out"; bad "provision failed"; }
"$FEDSEG" provision --consortium othernet --aggregator 127.0.0.1 --sites x --out "$T/other" > /dev/null 2>&1 ||
    bad "second consortium failed"
for f in ca/ca.crt ca/ca.key aggregator/aggregator.crt aggregator/aggregator.key aggregator/ca.crt \
         aggregator/aggregator.conf consortium.json; do
    [ -f "$C/$f" ] || bad "missing $f"
done

# CA
subj "$C/ca/ca.crt" | grep -q "O=brainnet" || bad "CA subject: $(subj "$C/ca/ca.crt")"
ext "$C/ca/ca.crt" basicConstraints | grep -q "CA:TRUE" || bad "CA is not CA:TRUE"
openssl x509 -in "$C/ca/ca.crt" -noout -ext basicConstraints | grep -q critical || bad "CA basicConstraints not critical"
ku=$(ext "$C/ca/ca.crt" keyUsage)
[ "$ku" = "Certificate Sign, CRL Sign" ] || bad "CA keyUsage: $ku"
openssl x509 -in "$C/ca/ca.crt" -noout -text | grep -q "ASN1 OID: prime256v1" || bad "CA key is not P-256"
[ "$(openssl x509 -in "$C/ca/ca.crt" -noout -subject)" = "$(openssl x509 -in "$C/ca/ca.crt" -noout -issuer | sed 's/^issuer/subject/')" ] ||
    bad "CA is not self-signed"
openssl x509 -in "$C/ca/ca.crt" -noout -checkend $((9 * 365 * 86400)) > /dev/null || bad "CA valid less than 9 years"

# every certificate: chain, key mode, key match; none against the other CA
for crt in "$C/aggregator/aggregator.crt" "$C"/sites/*/site_?.crt; do
    key=${crt%.crt}.key
    openssl verify -x509_strict -CAfile "$C/ca/ca.crt" "$crt" > /dev/null 2>&1 || bad "$crt does not verify"
    openssl verify -CAfile "$T/other/ca/ca.crt" "$crt" > /dev/null 2>&1 && bad "$crt verifies against another CA"
    [ "$(mode "$key")" = 600 ] || bad "$key mode $(mode "$key") under umask 000"
    [ "$(mode "$(dirname "$key")")" = 700 ] || bad "$(dirname "$key") mode $(mode "$(dirname "$key")")"
    [ "$(openssl pkey -in "$key" -pubout)" = "$(openssl x509 -in "$crt" -pubkey -noout)" ] ||
        bad "$key does not match $crt"
    head -1 "$key" | grep -q "BEGIN PRIVATE KEY" || bad "$key is not PKCS#8 PEM"
    cmp -s "$(dirname "$crt")/ca.crt" "$C/ca/ca.crt" || bad "$(dirname "$crt")/ca.crt differs from the CA"
    # consortium.json records serial and fingerprint as openssl prints them
    serial=$(openssl x509 -in "$crt" -noout -serial | sed 's/serial=//')
    fp=$(openssl x509 -in "$crt" -noout -fingerprint -sha256 | sed 's/.*=//')
    grep -q "\"serial\": \"$serial\"" "$C/consortium.json" || bad "serial $serial of $crt not in consortium.json"
    grep -q "\"sha256\": \"$fp\"" "$C/consortium.json" || bad "fingerprint of $crt not in consortium.json"
done
[ "$(mode "$C/ca/ca.key")" = 600 ] || bad "CA key mode $(mode "$C/ca/ca.key")"
[ "$(mode "$C/ca")" = 700 ] || bad "ca/ mode $(mode "$C/ca")"
[ "$(openssl pkey -in "$C/ca/ca.key" -pubout)" = "$(openssl x509 -in "$C/ca/ca.crt" -pubkey -noout)" ] ||
    bad "CA key does not match CA certificate"
# a key is not another's: site_1 key vs site_2 certificate
[ "$(openssl pkey -in "$C/sites/site_1/site_1.key" -pubout)" = "$(openssl x509 -in "$C/sites/site_2/site_2.crt" -pubkey -noout)" ] &&
    bad "site_1 and site_2 share a key"
s1=$(openssl x509 -in "$C/sites/site_1/site_1.crt" -noout -serial)
s2=$(openssl x509 -in "$C/sites/site_2/site_2.crt" -noout -serial)
[ "$s1" != "$s2" ] || bad "two certificates share serial $s1"
[ "${#s1}" -ge 37 ] || bad "serial shorter than 15 octets: $s1"

# aggregator certificate
A="$C/aggregator/aggregator.crt"
subj "$A" | grep -q "^CN=aggregator,O=brainnet$" || bad "aggregator subject: $(subj "$A")"
[ "$(ext "$A" subjectAltName)" = "DNS:agg.example.org, DNS:localhost, IP Address:127.0.0.1" ] ||
    bad "aggregator SAN: $(ext "$A" subjectAltName)"
[ "$(ext "$A" extendedKeyUsage)" = "TLS Web Server Authentication" ] || bad "aggregator EKU: $(ext "$A" extendedKeyUsage)"
ext "$A" basicConstraints | grep -q "CA:FALSE" || bad "aggregator is not CA:FALSE"
openssl verify -purpose sslserver -CAfile "$C/ca/ca.crt" "$A" > /dev/null 2>&1 || bad "aggregator not valid for sslserver"
openssl verify -purpose sslclient -CAfile "$C/ca/ca.crt" "$A" > /dev/null 2>&1 && bad "aggregator valid as a TLS client"

# site certificates and kits
for s in site_1 site_2 site_3; do
    K="$C/sites/$s"
    subj "$K/$s.crt" | grep -q "^CN=$s,O=brainnet$" || bad "$s subject: $(subj "$K/$s.crt")"
    [ "$(ext "$K/$s.crt" subjectAltName)" = "URI:spiffe://brainnet/site/$s" ] || bad "$s SAN: $(ext "$K/$s.crt" subjectAltName)"
    [ "$(ext "$K/$s.crt" extendedKeyUsage)" = "TLS Web Client Authentication" ] || bad "$s EKU"
    openssl verify -purpose sslclient -CAfile "$C/ca/ca.crt" "$K/$s.crt" > /dev/null 2>&1 || bad "$s not valid for sslclient"
    openssl verify -purpose sslserver -CAfile "$C/ca/ca.crt" "$K/$s.crt" > /dev/null 2>&1 && bad "$s valid as a TLS server"
    for k in aggregator server_name ca cert key site data device state_dir; do
        grep -q "^$k = " "$K/node.conf" || bad "$s node.conf lacks '$k'"
    done
    grep -q "^aggregator = agg.example.org:7443$" "$K/node.conf" || bad "$s node.conf aggregator address"
    grep -q "^site = $s$" "$K/node.conf" || bad "$s node.conf site"
    grep -q "^cert = $s.crt$" "$K/node.conf" || bad "$s node.conf cert path"
    grep -q "^data = /path/to/this/site/data$" "$K/node.conf" || bad "$s node.conf data placeholder"
    [ "$(grep -c '^#' "$K/node.conf")" -ge 9 ] || bad "$s node.conf is not commented"
done
AC="$C/aggregator/aggregator.conf"
for k in listen ca cert key sites rounds min_sites fraction round_deadline_s local_epochs model lr state_dir metrics; do
    grep -q "^$k = " "$AC" || bad "aggregator.conf lacks '$k'"
done
grep -q "^sites = site_1,site_2,site_3$" "$AC" || bad "aggregator.conf site list: $(grep ^sites "$AC")"
grep -q "^listen = 0.0.0.0:7443$" "$AC" || bad "aggregator.conf listen: $(grep ^listen "$AC")"
[ "$(grep -c '^#' "$AC")" -ge 14 ] || bad "aggregator.conf is not commented"
grep -q '"name": "brainnet"' "$C/consortium.json" || bad "consortium.json name"
grep -q '"aggregator": "agg.example.org:7443"' "$C/consortium.json" || bad "consortium.json aggregator"
[ "$(grep -c '"name": "site_' "$C/consortium.json")" = 3 ] || bad "consortium.json does not list 3 sites"
ls -a "$T" | grep -q provision && bad "a temporary folder was left next to DIR"

# an IP literal gets an IP SAN, and its default port
[ "$(ext "$T/other/aggregator/aggregator.crt" subjectAltName)" = "IP Address:127.0.0.1, DNS:localhost" ] ||
    bad "IP aggregator SAN: $(ext "$T/other/aggregator/aggregator.crt" subjectAltName)"
grep -q "^aggregator = 127.0.0.1:50051$" "$T/other/sites/x/node.conf" || bad "default port"

# --add-site: nobody else's files change
snapshot "$C" | grep -v -e ' ./consortium.json$' -e ' ./aggregator/aggregator.conf$' > "$T/before"
cp "$C/consortium.json" "$T/json.before"
cp "$AC" "$T/conf.before"
"$FEDSEG" provision --out "$C" --add-site hosp_d > "$T/out" 2>&1 || { cat "$T/out"; bad "--add-site failed"; }
snapshot "$C" | grep -v -e ' ./consortium.json$' -e ' ./aggregator/aggregator.conf$' -e ' ./sites/hosp_d/' > "$T/after"
cmp -s "$T/before" "$T/after" || { diff "$T/before" "$T/after"; bad "--add-site changed other files"; }
D="$C/sites/hosp_d"
for f in hosp_d.crt hosp_d.key ca.crt node.conf; do [ -f "$D/$f" ] || bad "new kit lacks $f"; done
openssl verify -x509_strict -purpose sslclient -CAfile "$C/ca/ca.crt" "$D/hosp_d.crt" > /dev/null 2>&1 ||
    bad "new site certificate does not verify"
openssl verify -CAfile "$T/other/ca/ca.crt" "$D/hosp_d.crt" > /dev/null 2>&1 && bad "new site verifies against another CA"
[ "$(mode "$D/hosp_d.key")" = 600 ] || bad "new key mode $(mode "$D/hosp_d.key")"
[ "$(openssl pkey -in "$D/hosp_d.key" -pubout)" = "$(openssl x509 -in "$D/hosp_d.crt" -pubkey -noout)" ] ||
    bad "new key does not match its certificate"
subj "$D/hosp_d.crt" | grep -q "^CN=hosp_d,O=brainnet$" || bad "new site subject"
grep -q "^aggregator = agg.example.org:7443$" "$D/node.conf" || bad "new node.conf aggregator"
diff "$T/json.before" "$C/consortium.json" | grep -q '^<' && bad "consortium.json lost or changed lines"
grep -q '"name": "hosp_d"' "$C/consortium.json" || bad "consortium.json lacks hosp_d"
grep -q "\"serial\": \"$(openssl x509 -in "$D/hosp_d.crt" -noout -serial | sed 's/serial=//')\"" "$C/consortium.json" ||
    bad "consortium.json lacks hosp_d's serial"
[ "$(diff "$T/conf.before" "$AC" | grep -c '^[<>]')" = 2 ] || bad "aggregator.conf: more than the sites line changed"
grep -q "^sites = site_1,site_2,site_3,hosp_d$" "$AC" || bad "aggregator.conf after add: $(grep ^sites "$AC")"
"$FEDSEG" provision --out "$C" --add-site e1,e2 > /dev/null 2>&1 || bad "adding two sites failed"
grep -q "^sites = site_1,site_2,site_3,hosp_d,e1,e2$" "$AC" || bad "two sites: $(grep ^sites "$AC")"

# refusals: non-zero, a message, nothing changed
snapshot "$C" > "$T/snap"
refuse() {
    what=$1; shift
    "$FEDSEG" provision "$@" > "$T/out" 2> "$T/err"
    rc=$?
    [ $rc -ne 0 ] || bad "$what: exit code 0"
    [ -s "$T/err" ] || bad "$what: no message"
    snapshot "$C" | cmp -s - "$T/snap" || bad "$what: the consortium changed"
}
refuse "existing consortium" --consortium brainnet --aggregator h --sites z --out "$C"
grep -q -- "--add-site" "$T/err" || bad "existing consortium: no hint to use --add-site: $(cat "$T/err")"
refuse "site already present" --out "$C" --add-site site_2
grep -q "site_2" "$T/err" || bad "site already present: message does not name it"
refuse "invalid site name" --out "$C" --add-site 'bad/name'
refuse "dot-dot name" --out "$C" --add-site ..
refuse "reserved name" --out "$C" --add-site aggregator
refuse "name twice" --out "$C" --add-site n1,n1
refuse "empty name" --out "$C" --add-site n1,
refuse "64-character name" --out "$C" --add-site "$(printf 'a%.0s' $(seq 64))"
refuse "--add-site with --sites" --out "$C" --add-site n2 --sites n3
refuse "missing --out" --add-site n2
mkdir "$T/junk" && echo x > "$T/junk/notes.txt"
refuse "non-empty folder" --consortium j --aggregator h --sites a --out "$T/junk"
[ "$(ls "$T/junk")" = notes.txt ] || bad "non-empty folder was changed"
refuse "bad address" --consortium j --aggregator 'h:99999' --sites a --out "$T/n1"
refuse "bad host" --consortium j --aggregator 'bad host' --sites a --out "$T/n1"
refuse "bad consortium name" --consortium 'a b' --aggregator h --sites a --out "$T/n1"
refuse "invalid site in --sites" --consortium j --aggregator h --sites 'ok,no way' --out "$T/n1"
[ ! -e "$T/n1" ] || bad "a refused provision created its folder"
refuse "no consortium" --out "$T/junk" --add-site a
cp -a "$C" "$T/noca" && rm "$T/noca/ca/ca.key"
refuse "missing CA key" --out "$T/noca" --add-site n4
grep -q "ca.key" "$T/err" || bad "missing CA: message does not name the key: $(cat "$T/err")"
[ ! -e "$T/noca/sites/n4" ] || bad "missing CA: a kit was written"
grep -q n4 "$T/noca/consortium.json" && bad "missing CA: consortium.json changed"
cp -a "$C" "$T/badjson" && printf '{"name": "brainnet", "sites": [' > "$T/badjson/consortium.json"
refuse "corrupt consortium.json" --out "$T/badjson" --add-site n5
grep -q "consortium.json" "$T/err" || bad "corrupt consortium.json: message does not name the file"
[ ! -e "$T/badjson/sites/n5" ] || bad "corrupt consortium.json: a kit was written"
cp "$T/other/ca/ca.key" "$T/noca/ca/ca.key"
refuse "another consortium's CA key" --out "$T/noca" --add-site n4
[ ! -e "$T/noca/sites/n4" ] || bad "foreign CA key: a kit was written"

# a second provisioner on the same folder is refused while the first holds it
if command -v flock > /dev/null; then
    flock "$C" sleep 3 &
    lockpid=$!
    sleep 1
    refuse "folder locked by another provisioner" --out "$C" --add-site n6
    grep -q "another fedseg provision" "$T/err" || bad "locked folder: message: $(cat "$T/err")"
    wait $lockpid
fi

# an empty folder is fine
mkdir "$T/empty"
"$FEDSEG" provision --consortium e --aggregator localhost:1 --sites a --out "$T/empty" > /dev/null 2>&1 ||
    bad "provision into an empty folder failed"
[ -f "$T/empty/consortium.json" ] || bad "empty folder: no consortium.json"
[ "$(ext "$T/empty/aggregator/aggregator.crt" subjectAltName)" = "DNS:localhost, IP Address:127.0.0.1" ] ||
    bad "localhost SAN: $(ext "$T/empty/aggregator/aggregator.crt" subjectAltName)"

[ $fail -eq 0 ] && echo "all provision checks passed"
exit $fail
