#!/usr/bin/env bash
# Checks that the trust commands `wssify --dev-ca show` prints work with the
# real clients on this machine, and that each client refuses the server
# without them:
#
#   curl, openssl s_client        (OpenSSL)
#   python3 with SSL_CERT_FILE    (OpenSSL, through Python's ssl)
#   node with NODE_EXTRA_CA_CERTS (Node's TLS)
#   certutil + tstclnt            (NSS: what Chrome and Firefox use on Linux;
#                                  the Chrome command and the Firefox loop)
#
# and that OpenSSL and NSS refuse a certificate for example.com signed by the
# development CA (its name constraints). Everything happens in a temporary
# HOME with a development CA of its own; nothing is installed or trusted
# outside it. A client that is not installed is reported, and makes the
# script fail: nothing is skipped silently.
#   Debian/Ubuntu: apt-get install curl openssl python3 nodejs libnss3-tools
#
# usage: scripts/check-dev-ca-clients.sh [WSSIFY_BINARY]   (default: cargo build, target/debug/wssify)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $# -ge 1 ]]; then
    bin=$1
else
    cargo build -q --bin wssify
    bin=target/debug/wssify
fi
bin="$(realpath "$bin")"

work="$(mktemp -d)"
pid=""
cleanup() {
    [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

export HOME="$work/home" XDG_DATA_HOME="$work/home/.local/share"
mkdir -p "$HOME"
ca="$XDG_DATA_HOME/wssify/dev-ca/ca.pem"

failed=0 missing=()
pass() { printf 'ok      %s\n' "$1"; }
fail() { printf 'FAILED  %s\n' "$1"; failed=$((failed + 1)); }
have() { command -v "$1" >/dev/null 2>&1 || { missing+=("$1"); return 1; }; }

"$bin" --dev-ca show >"$work/show.txt"
# start_wssify ARGS...: starts it on the loopback addresses given, waits
# until it listens, sets pid and port.
start_wssify() {
    "$bin" "$@" --to 127.0.0.1:9 2>"$work/wssify.log" &
    pid=$!
    for _ in $(seq 100); do
        grep -q 'listening on ' "$work/wssify.log" 2>/dev/null && break
        sleep 0.1
    done
    port="$(sed -nE 's/.*listening on [^ ]*:([0-9]+) .*/\1/p' "$work/wssify.log" | head -n1)"
    [[ $port =~ ^[0-9]+$ ]] || { cat "$work/wssify.log"; echo "wssify did not start" >&2; exit 1; }
}
# A free port first, then that port on both loopback addresses: clients
# resolve localhost to ::1 or to 127.0.0.1.
start_wssify --listen 127.0.0.1:0
kill "$pid" && wait "$pid" 2>/dev/null || true
start_wssify --listen "127.0.0.1:$port" --listen "[::1]:$port"
# The commands as printed, for the port wssify listens on.
show() { grep -F -- "$1" "$work/show.txt" | head -n1 | sed -E "s/^ +//; s/:9300/:$port/g"; }

if have curl; then
    cmd="$(show 'curl --cacert')"
    [[ "$(eval "$cmd -s -o /dev/null -w '%{ssl_verify_result}'" || true)" == 0 ]] &&
        pass "curl: $cmd" || fail "curl: $cmd"
    [[ "$(curl -s -o /dev/null -w '%{ssl_verify_result}' "https://localhost:$port/" || true)" != 0 ]] &&
        pass "curl refuses it without --cacert" || fail "curl accepted it without --cacert"
fi

if have openssl; then
    cmd="$(show 'openssl s_client')"
    eval "$cmd" | grep -q 'Verify return code: 0 (ok)' && pass "openssl: $cmd" || fail "openssl: $cmd"
fi

py='import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.wrap_socket(socket.create_connection(("localhost", int(sys.argv[1]))), server_hostname="localhost")'
if have python3; then
    SSL_CERT_FILE="$ca" python3 -c "$py" "$port" 2>/dev/null &&
        pass "python3: SSL_CERT_FILE=$ca" || fail "python3: SSL_CERT_FILE=$ca"
    ! python3 -c "$py" "$port" 2>/dev/null &&
        pass "python3 refuses it without SSL_CERT_FILE" || fail "python3 accepted it without SSL_CERT_FILE"
fi

js='const s = require("tls").connect(+process.argv[1], "localhost", { servername: "localhost" },
  () => { process.exit(s.authorized ? 0 : 1); });
s.on("error", () => process.exit(1));'
if have node; then
    NODE_EXTRA_CA_CERTS="$ca" node -e "$js" "$port" 2>/dev/null &&
        pass "node: NODE_EXTRA_CA_CERTS=$ca" || fail "node: NODE_EXTRA_CA_CERTS=$ca"
    ! node -e "$js" "$port" 2>/dev/null &&
        pass "node refuses it without NODE_EXTRA_CA_CERTS" || fail "node accepted it without NODE_EXTRA_CA_CERTS"
fi

if have certutil && have tstclnt; then
    chrome="sql:$HOME/.pki/nssdb"
    mkdir -p "$HOME/.pki/nssdb" && certutil -d "$chrome" -N --empty-password
    # tls_nss DB: a TLS handshake with localhost verified against DB.
    tls_nss() { timeout 10 tstclnt -Q -h localhost -p "$port" -d "$1" </dev/null >"$work/nss.txt" 2>&1; }
    tls_nss "$chrome" && fail "NSS accepted it before the CA was added" || pass "NSS refuses it without the CA"
    cmd="$(show 'certutil -d sql:"$HOME"/.pki/nssdb -A')"
    eval "$cmd" && tls_nss "$chrome" && pass "NSS (Chrome/Chromium on Linux): $cmd" || {
        fail "NSS: $cmd"
        cat "$work/nss.txt"
    }
    # Firefox: the printed loop over profiles, on a profile made here.
    profile="$HOME/.mozilla/firefox/wssify.default-release"
    mkdir -p "$profile" && certutil -d "sql:$profile" -N --empty-password
    cmd="$(show 'for db in')"
    eval "$cmd" && tls_nss "sql:$profile" && pass "NSS (Firefox profile): the printed loop over profiles" || {
        fail "NSS (Firefox profile): $cmd"
        cat "$work/nss.txt"
    }
fi

# A certificate for example.com signed by the CA: the name constraints
# must make every verifier refuse it.
if have openssl; then
    dir="$(dirname "$ca")"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=example.com \
        -keyout "$work/forged.key" -out "$work/forged.csr" 2>/dev/null
    printf 'subjectAltName=DNS:example.com\n' >"$work/forged.ext"
    openssl x509 -req -in "$work/forged.csr" -CA "$ca" -CAkey "$dir/ca.key" -set_serial 7 \
        -days 1 -extfile "$work/forged.ext" -out "$work/forged.pem" 2>/dev/null
    out="$(openssl verify -CAfile "$ca" "$work/forged.pem" 2>&1 || true)"
    grep -q 'permitted subtree violation' <<<"$out" &&
        pass "openssl refuses example.com signed by the CA (name constraints)" ||
        fail "openssl did not refuse example.com signed by the CA"
    if have vfychain && [[ -d $HOME/.pki/nssdb ]]; then
        out="$(vfychain -d "sql:$HOME/.pki/nssdb" -u 1 -a "$work/forged.pem" 2>&1 || true)"
        grep -q 'not permitted' <<<"$out" &&
            pass "NSS refuses example.com signed by the CA (name constraints)" ||
            fail "NSS did not refuse example.com signed by the CA"
    fi
fi

echo
if ((${#missing[@]})); then
    echo "not checked, not installed: ${missing[*]}"
fi
if ((failed || ${#missing[@]})); then
    echo "check-dev-ca-clients: $failed failed, ${#missing[@]} not installed"
    exit 1
fi
echo "check-dev-ca-clients: all passed"
