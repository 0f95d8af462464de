#!/bin/sh
# Installs the Debian packages stockade needs, only those missing. Idempotent; quiet when all present.
set -eu
PKGS="nftables libnftables1 libseccomp2 iproute2 bubblewrap fwknop-client openssh-server openssh-client chromium curl rsyslog rsyslog-gnutls faketime systemd e2fsprogs util-linux gcc libssl-dev python3-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
# node and npm often come from elsewhere (nodesource, a tarball); Debian's npm would conflict with them.
command -v npm >/dev/null 2>&1 || missing="$missing npm"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "stockade: missing Debian packages:$missing" >&2
  echo "stockade: run 'sudo $0' (or install them yourself) and try again" >&2
  exit 3
fi
echo "stockade: installing Debian packages:$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null || true
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
