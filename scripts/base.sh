#!/usr/bin/env bash
# The base image: OS security updates, Python 3 with pip, Java 17, pssh,
# common tools and Ganglia's gmond where the OS packages it.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

detect_os

log "applying OS security updates"
case "$OS_FAMILY" in
  debian)
    retry 3 5 pkg update
    pkg upgrade
    ;;
  amzn2023) pkg upgrade --security ;;
  amzn2) pkg update --security ;;
esac

case "$OS_FAMILY" in
  debian)
    java=openjdk-17-jre-headless
    tools=(git curl ca-certificates xfsprogs procps rsync unzip tar gzip)
    gmond=ganglia-monitor
    ;;
  amzn2023)
    java="java-17-amazon-corretto-headless"
    tools=(git curl-minimal ca-certificates xfsprogs procps-ng rsync unzip tar gzip)
    gmond=""
    ;;
  amzn2)
    java="java-17-amazon-corretto-headless"
    tools=(git curl ca-certificates xfsprogs procps-ng rsync unzip tar gzip)
    gmond=ganglia-gmond
    ;;
esac

log "installing Python 3 with pip, $java and common tools"
retry 3 10 pkg_install python3 python3-pip "$java" "${tools[@]}"

# pssh is packaged on Debian and Ubuntu; on Amazon Linux only through EPEL.
if pkg_available pssh; then
  retry 3 10 pkg_install pssh
else
  note "pssh: not packaged for $OS_ID $OS_VERSION; not installed"
fi

if [[ -z $gmond ]]; then
  note "ganglia gmond: not packaged for $OS_ID $OS_VERSION; not installed"
elif pkg_available "$gmond"; then
  retry 3 10 pkg_install "$gmond"
else
  note "ganglia gmond: $gmond is not in this system's repositories; not installed"
fi

java -version 2>&1 | head -n 1 | grep -q '"17\.' || die "Java 17 is not the default java: $(java -version 2>&1 | head -n 1)"
python3 -m pip --version >/dev/null || die "pip for Python 3 is missing"
install -d -m 0755 "$(dirname "$BASE_MARKER")"
printf 'os=%s %s\njava=%s\npython=%s\n' "$OS_ID" "$OS_VERSION" "$(java -version 2>&1 | head -n 1)" "$(python3 --version)" >"$BASE_MARKER"
log "base: done ($(java -version 2>&1 | head -n 1); $(python3 --version))"
