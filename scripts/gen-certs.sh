#!/usr/bin/env bash
# Makes a local certificate authority and a `localhost` certificate signed by
# it, for running wssify with --cert/--key on a development machine:
#
#   certs/ca.pem          the CA certificate: trust this in browsers and clients
#   certs/ca.key          the CA's private key (never commit it)
#   certs/localhost.pem   the localhost certificate followed by the CA (the chain)
#   certs/localhost.key   its private key (never commit it)
#
# The localhost certificate is valid for localhost, 127.0.0.1 and ::1. Keys are
# ECDSA P-256 (PKCS#8). Running it again keeps what is still good: an existing
# CA is reused, and the localhost certificate is remade only when it is missing,
# no longer matches the CA, or expires within 30 days. --force remakes both.
#
# usage: scripts/gen-certs.sh [--force] [DIR]     (DIR defaults to certs/)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
force=0
dir=""
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "gen-certs: unknown option $arg" >&2; exit 2 ;;
        *) dir="$arg" ;;
    esac
done
dir="${dir:-$root/certs}"

if ! command -v openssl >/dev/null 2>&1; then
    echo "gen-certs: openssl is not installed (apt-get install openssl, or brew install openssl)" >&2
    exit 1
fi

mkdir -p "$dir"
cd "$dir"
umask 077 # keys are readable by their owner only
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cat >"$work/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

if [[ $force == 1 || ! -s ca.pem || ! -s ca.key ]]; then
    new_key ca.key
    openssl req -x509 -new -sha256 -days 3650 -key ca.key \
        -subj "/CN=wssify local development CA ($(hostname 2>/dev/null || echo localhost))" \
        -config "$work/openssl.cnf" -extensions v3_ca -out ca.pem
    chmod 644 ca.pem
    echo "made a new CA: $dir/ca.pem"
    made_ca=1
else
    echo "kept the CA: $dir/ca.pem"
    made_ca=0
fi

leaf_is_good() {
    [[ -s localhost.pem && -s localhost.key ]] &&
        openssl verify -CAfile ca.pem localhost.pem >/dev/null 2>&1 &&
        openssl x509 -in localhost.pem -noout -checkend $((30 * 24 * 3600)) >/dev/null 2>&1 &&
        [[ "$(openssl x509 -in localhost.pem -noout -pubkey)" == "$(openssl pkey -in localhost.key -pubout)" ]]
}

if [[ $force == 1 || $made_ca == 1 ]] || ! leaf_is_good; then
    new_key localhost.key
    openssl req -new -key localhost.key -subj "/CN=localhost" \
        -config "$work/openssl.cnf" -out "$work/localhost.csr"
    # 825 days: the longest validity Apple platforms accept for a server certificate.
    openssl x509 -req -sha256 -days 825 -in "$work/localhost.csr" \
        -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
        -extfile "$work/openssl.cnf" -extensions v3_leaf -out "$work/leaf.pem" 2>/dev/null
    cat "$work/leaf.pem" ca.pem >localhost.pem
    chmod 644 localhost.pem
    echo "made a new localhost certificate: $dir/localhost.pem"
else
    echo "kept the localhost certificate: $dir/localhost.pem"
fi

openssl verify -CAfile ca.pem localhost.pem >/dev/null
fingerprint="$(openssl x509 -in localhost.pem -noout -fingerprint -sha256 | cut -d= -f2)"
expires="$(openssl x509 -in localhost.pem -noout -enddate | cut -d= -f2)"
rel="${dir#"$root"/}"

cat <<USAGE

localhost certificate (localhost, 127.0.0.1, ::1), expires $expires
SHA-256 fingerprint: $fingerprint

Run wssify with it:
  wssify --listen 9300 --to 127.0.0.1:9200 --cert $rel/localhost.pem --key $rel/localhost.key
  (or: cargo run --release -- --listen 9300 --to 127.0.0.1:9200 --cert $rel/localhost.pem --key $rel/localhost.key)

Then make clients trust $rel/ca.pem:
  this repo:   cargo run --example wss_client -- --ca $rel/ca.pem wss://localhost:9300/
  Node.js:     NODE_EXTRA_CA_CERTS=$rel/ca.pem node app.js
  Debian/Ubuntu system store:
               sudo cp $rel/ca.pem /usr/local/share/ca-certificates/wssify-dev-ca.crt && sudo update-ca-certificates
  Firefox/Chrome: import $rel/ca.pem as an authority in the certificate settings.
Keep $rel/ca.key private: anyone who has it can make certificates your machine trusts.
USAGE
