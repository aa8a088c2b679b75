#!/usr/bin/env bash
# Builds wssify's container image, and a ws:// echo server image for the
# Kubernetes sidecar example, FROM scratch out of local files: no registry
# is needed.
#
#   scripts/container-image.sh            # localhost/wssify:latest, localhost/ws-echo:latest
#   TAG=test scripts/container-image.sh   # another tag
#
# Steps: make sure podman can run here (see setup_podman), `cargo build
# --release` the wssify binary and the ws_echo example, stage a root file
# system for each (the binary, the glibc shared objects `ldd` lists, the
# NSS pieces that resolve host names, /etc/passwd, /etc/group and
# /etc/nsswitch.conf) under target/container/, and `podman build` them with
# deploy/container/Containerfile and deploy/container/ws-echo.Containerfile.
# Prints each image's name and size.
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${TAG:-latest}
TARGET=${CARGO_TARGET_DIR:-target}
STAGE=$TARGET/container

# podman, buildah and runc from Debian; and /etc/containers/containers.conf
# with two fixes when it does not exist yet (an existing one is left alone):
# - default_ulimits within the hard limits: rootful podman asks for
#   nofile=1048576, which fails ("setrlimit RLIMIT_NOFILE: Operation not
#   permitted") where root lacks CAP_SYS_RESOURCE;
# - runtime = "runc": crun 1.8 refuses a cgroup v1 host whose v2 hierarchy
#   still holds a controller ("cgroups in hybrid mode not supported").
setup_podman() {
  local missing=()
  for p in podman buildah runc; do command -v "$p" >/dev/null || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "container-image.sh: needs ${missing[*]}: install with \`sudo apt-get install -y podman buildah runc\`" >&2
      exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq podman buildah runc >/dev/null \
      || { apt-get update -qq && apt-get install -y -qq podman buildah runc >/dev/null; }
  fi
  local conf=/etc/containers/containers.conf
  if [ ! -e "$conf" ]; then
    local hn hu
    hn=$(ulimit -Hn); hu=$(ulimit -Hu)
    [ "$hn" = unlimited ] && hn=1048576
    { [ "$hu" = unlimited ] || [ "$hu" -gt 32768 ]; } && hu=32768
    local text
    text=$(printf '# Written by wssify scripts/container-image.sh.\n[containers]\n# At most the hard limits: root may lack CAP_SYS_RESOURCE to raise them.\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\n# crun 1.8 refuses cgroup v1 hosts with a controller left in the v2 hierarchy.\nruntime = "runc"\n' "$hn" "$hn" "$hu" "$hu")
    if [ "$(id -u)" != 0 ]; then
      echo "container-image.sh: $conf is missing; as root, write:" >&2
      echo "$text" >&2
      exit 1
    fi
    mkdir -p /etc/containers
    echo "$text" >"$conf"
    echo "container-image.sh: wrote $conf (default_ulimits nofile=$hn nproc=$hu, runtime runc)" >&2
  fi
}

# Stages BINARY as /usr/local/bin/NAME in ROOTFS, with every shared object
# it loads and what glibc needs to resolve names.
stage() {
  local binary=$1 name=$2 rootfs=$3
  rm -rf "$rootfs"
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp"
  install -m 0755 "$binary" "$rootfs/usr/local/bin/$name"
  # `ldd` lists the loader (/lib64/ld-linux-x86-64.so.2) and each library
  # by path; linux-vdso has none (the kernel maps it). Copied at the same
  # paths, symlinks dereferenced.
  local libs libdir
  libs=$(ldd "$binary" | grep -o '/[^ ]*' || true)
  [ -n "$libs" ] || { echo "container-image.sh: ldd lists no libraries for $binary" >&2; exit 1; }
  for lib in $libs; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
  # Name lookups (`--to ws-server:9200`) go through glibc's NSS, which
  # reads /etc/nsswitch.conf and loads libnss_files/libnss_dns (built into
  # libc.so.6 since glibc 2.34, where these are stubs; copied anyway for an
  # older glibc) and libresolv.
  libdir=$(dirname "$(echo "$libs" | grep '/libc\.so\.6$')")
  for lib in libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
    [ -e "$libdir/$lib" ] && cp -L "$libdir/$lib" "$rootfs$libdir/$lib"
  done
  printf 'hosts: files dns\npasswd: files\ngroup: files\n' >"$rootfs/etc/nsswitch.conf"
  printf 'root:x:0:0:root:/:/nonexistent\nnobody:x:65534:65534:nobody:/nonexistent:/nonexistent\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  # Mount points podman (or the kubelet) fills in; empty in the image.
  : >"$rootfs/etc/hosts"
  : >"$rootfs/etc/resolv.conf"
  chmod 1777 "$rootfs/tmp"
}

setup_podman
cargo build --release --bin wssify --example ws_echo
stage "$TARGET/release/wssify" wssify "$STAGE/wssify/rootfs"
stage "$TARGET/release/examples/ws_echo" ws_echo "$STAGE/ws-echo/rootfs"
# Builds IMAGE from CONTAINERFILE and CONTEXT, then removes the image the
# tag named before, if it changed and nothing uses it (only that one: other
# untagged images on the machine are not this script's to prune).
build() {
  local image=$1 containerfile=$2 context=$3 old
  old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
  podman build -q -t "$image" -f "$containerfile" "$context" >/dev/null
  if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
}
build "localhost/wssify:$TAG" deploy/container/Containerfile "$STAGE/wssify"
build "localhost/ws-echo:$TAG" deploy/container/ws-echo.Containerfile "$STAGE/ws-echo"
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' --filter "reference=localhost/wssify:$TAG" --filter "reference=localhost/ws-echo:$TAG"
