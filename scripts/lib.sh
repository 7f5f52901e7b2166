#!/usr/bin/env bash
# Shared helpers for the provisioners, sourced by each of them (never run):
# OS detection, a package manager wrapper that waits for locks, bounded
# download retries, checksum parsing, and notes recorded on the image.

# base.sh writes it last; spark.sh refuses a system without it, so a Spark
# image always holds the base, whether built in one go or on a base AMI.
# shellcheck disable=SC2034 # read by the scripts that source this file
BASE_MARKER=/etc/spark-packer/base-image

# Lines starting "spark-packer:" are the provisioners' own voice in Packer's
# log; build-amis lifts the ERROR and NOTE ones into its report.
log() { printf 'spark-packer: %s\n' "$*"; }
die() {
  printf 'spark-packer: ERROR: %s\n' "$*" >&2
  exit 1
}

# Something the image lacks on purpose, said in the log and kept on the image
# in /etc/spark-packer/notes, so it is never skipped silently.
note() {
  printf 'spark-packer: NOTE: %s\n' "$*"
  mkdir -p "$(etc_dir)/spark-packer"
  printf '%s\n' "$*" >>"$(etc_dir)/spark-packer/notes"
  if [[ -f $(etc_dir)/spark-packer/contents ]]; then write_image_json; fi
}

# One field of /etc/os-release, unquoted: read, never sourced or executed.
os_release_field() {
  sed -n "s/^$1=//p" "${OS_RELEASE_FILE:-/etc/os-release}" | head -n 1 | tr -d '"'"'"
}

# Sets OS_ID, OS_VERSION and OS_FAMILY (amzn2023, amzn2 or debian) from
# /etc/os-release; fails on anything else rather than guess.
detect_os() {
  [[ -r ${OS_RELEASE_FILE:-/etc/os-release} ]] || die "no /etc/os-release: cannot tell which OS this is"
  OS_ID=$(os_release_field ID)
  OS_VERSION=$(os_release_field VERSION_ID)
  local like
  like=$(os_release_field ID_LIKE)
  case "$OS_ID:$OS_VERSION" in
    amzn:2023*) OS_FAMILY=amzn2023 ;;
    amzn:2) OS_FAMILY=amzn2 ;;
    debian:* | ubuntu:*) OS_FAMILY=debian ;;
    *)
      if [[ " $like " == *" debian "* ]]; then
        OS_FAMILY=debian
      else
        die "unsupported OS '$OS_ID $OS_VERSION': supported are Amazon Linux 2023 and 2, Debian and Ubuntu"
      fi
      ;;
  esac
  export OS_ID OS_VERSION OS_FAMILY
  log "OS: $OS_ID $OS_VERSION ($OS_FAMILY family): $(os_release_field PRETTY_NAME)"
  log "instance: $(uname -m); logged in as ${SUDO_USER:-$(id -un)}; provisioning as $(id -un)${SUDO_USER:+ through sudo}"
}

# choose_base_packages JAVA_MAJOR: the base image's package names on
# OS_FAMILY: BASE_JAVA (the JRE), BASE_TOOLS (an array) and BASE_GMOND
# (Ganglia's gmond; empty where the OS does not package it). Amazon Linux 2023
# ships curl-minimal, which a `curl` install would conflict with.
choose_base_packages() {
  local java_major=$1
  case "$OS_FAMILY" in
    debian)
      BASE_JAVA=openjdk-$java_major-jre-headless
      BASE_TOOLS=(git curl wget ca-certificates xfsprogs procps rsync unzip tar gzip)
      BASE_GMOND=ganglia-monitor
      ;;
    amzn2023)
      BASE_JAVA=java-$java_major-amazon-corretto-headless
      BASE_TOOLS=(git curl-minimal wget ca-certificates xfsprogs procps-ng rsync unzip tar gzip)
      BASE_GMOND=""
      ;;
    amzn2)
      BASE_JAVA=java-$java_major-amazon-corretto-headless
      BASE_TOOLS=(git curl wget ca-certificates xfsprogs procps-ng rsync unzip tar gzip)
      BASE_GMOND=ganglia-gmond
      ;;
    *) die "choose_base_packages: call detect_os first" ;;
  esac
}

# Waits (bounded) while another yum or dnf holds the rpm lock: the 2014
# scripts failed on yum lock contention with cloud-init at boot.
wait_for_rpm_lock() {
  local waited=0 pidfile pid busy
  while :; do
    busy=""
    for pidfile in /var/run/yum.pid /var/cache/dnf/*_lock.pid /var/lib/dnf/*_lock.pid /run/dnf*.pid; do
      [[ -f $pidfile ]] || continue
      pid=$(tr -dc '0-9' <"$pidfile")
      if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then busy=$pidfile; fi
    done
    [[ -z $busy ]] && return 0
    ((waited >= 600)) && die "the package manager stayed locked for ${waited}s ($busy)"
    ((waited % 30 == 0)) && log "waiting for the package manager lock ($busy)"
    sleep 5
    waited=$((waited + 5))
  done
}

# The package manager for OS_FAMILY, waiting for its lock. apt-get waits by
# itself with DPkg::Lock::Timeout.
pkg() {
  case "$OS_FAMILY" in
    debian)
      DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q "$@"
      ;;
    amzn2023)
      wait_for_rpm_lock
      dnf -y -q "$@"
      ;;
    amzn2)
      wait_for_rpm_lock
      yum -y -q "$@"
      ;;
    *) die "pkg: call detect_os first" ;;
  esac
}

pkg_install() {
  case "$OS_FAMILY" in
    debian) pkg install --no-install-recommends "$@" ;;
    *) pkg install "$@" ;;
  esac
}

# Whether the OS's repositories have a package of that name.
pkg_available() {
  case "$OS_FAMILY" in
    debian) [[ -n $(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ && $2 != "(none)" {print $2}') ]] ;;
    amzn2023)
      wait_for_rpm_lock
      dnf -q list --available "$1" >/dev/null 2>&1 || rpm -q "$1" >/dev/null 2>&1
      ;;
    amzn2)
      wait_for_rpm_lock
      yum -q list available "$1" >/dev/null 2>&1 || rpm -q "$1" >/dev/null 2>&1
      ;;
  esac
}

# retry ATTEMPTS DELAY_SECONDS COMMAND...: runs COMMAND until it succeeds,
# at most ATTEMPTS times, DELAY_SECONDS apart (doubling).
retry() {
  local attempts=$1 delay=$2 try=1
  shift 2
  until "$@"; do
    ((try >= attempts)) && return 1
    log "attempt $try of $attempts failed: $*; retrying in ${delay}s"
    sleep "$delay"
    try=$((try + 1))
    delay=$((delay * 2))
  done
}

# download URL FILE: a bounded number of tries, never a partial file.
download() {
  local url=$1 file=$2
  retry "${DOWNLOAD_ATTEMPTS:-4}" 2 curl --fail --silent --show-error --location --connect-timeout 20 \
    --output "$file.part" "$url" || die "could not download $url after ${DOWNLOAD_ATTEMPTS:-4} attempts"
  mv "$file.part" "$file"
}

# The SHA-512 in a checksum file, lower case, in any format Apache has
# published: `sha512sum` ("<hex>  <file>"), BSD style ("SHA512 (<file>) =
# <hex>"), and the older `gpg --print-md SHA512` ("<file>: 2A1A2C5E 6E23C45F
# ..." in upper case, wrapped over lines).
sha512_from_checksum_file() {
  local text hex
  text=$(cat "$1")
  if [[ $text =~ ^[[:space:]]*([0-9a-fA-F]{128})([[:space:]]|$) ]]; then
    hex=${BASH_REMATCH[1]}
  elif [[ $text =~ ^SHA512[[:space:]]*\(.*\)[[:space:]]*=[[:space:]]*([0-9a-fA-F]{128}) ]]; then
    hex=${BASH_REMATCH[1]}
  elif [[ $text == *:* ]]; then
    hex=$(printf '%s' "${text#*:}" | tr -d ' \t\r\n')
  else
    hex=""
  fi
  hex=$(printf '%s' "$hex" | tr 'A-F' 'a-f')
  [[ $hex =~ ^[0-9a-f]{128}$ ]] || return 1
  printf '%s\n' "$hex"
}

# verify_sha512 FILE EXPECTED SOURCE: dies with both values on a mismatch.
verify_sha512() {
  local file=$1 expected=$2 source=$3 actual
  actual=$(sha512sum "$file" | awk '{print $1}')
  if [[ $actual != "$expected" ]]; then
    die "checksum mismatch for $(basename "$file"): SHA-512 is $actual, expected $expected ($source)"
  fi
  log "SHA-512 of $(basename "$file") verified ($source)"
}

# fetch_verified URL FILE EXPECTED SOURCE: downloads URL to FILE and checks
# it against EXPECTED (a pinned SHA-512; SOURCE says whose, for the log).
# The mirror's own URL.sha512, when it has one, must agree with the pin.
fetch_verified() {
  local url=$1 file=$2 expected=$3 source=$4 published
  expected=$(printf '%s' "$expected" | tr 'A-F' 'a-f')
  [[ $expected =~ ^[0-9a-f]{128}$ ]] ||
    die "no valid SHA-512 pinned for $(basename "$file") (got '$3'): pin it in packer/matrix.json"
  log "downloading $url"
  download "$url" "$file"
  if curl --fail --silent --location --connect-timeout 20 --output "$file.sha512" "$url.sha512"; then
    published=$(sha512_from_checksum_file "$file.sha512") ||
      die "cannot read a SHA-512 from $url.sha512 (not sha512sum, BSD or gpg --print-md format)"
    [[ $published == "$expected" ]] ||
      die "checksum mismatch: $url.sha512 says $published, but $source pins $expected"
    log "$url.sha512 agrees with $source"
  else
    log "no checksum file at $url.sha512; verifying against $source alone"
  fi
  verify_sha512 "$file" "$expected" "$source"
}

# unpack_and_link TARBALL TOP DEST LINK: unpacks TARBALL, which must hold one
# TOP/ directory, to DEST (replacing it) and points the symlink LINK at DEST.
unpack_and_link() {
  local tarball=$1 top=$2 dest=$3 link=$4 unpack
  log "unpacking to $dest"
  unpack=$(mktemp -d "$(dirname "$tarball")/unpack.XXXXXX")
  rm -rf "$dest"
  tar -xzf "$tarball" -C "$unpack"
  [[ -d $unpack/$top ]] || die "$(basename "$tarball") does not hold a $top/ directory"
  mv "$unpack/$top" "$dest"
  rm -rf "$unpack"
  ln -sfn "$dest" "$link"
}

# /etc/profile.d/<name>.sh: sets <var>=<dir> and puts <dir>/bin first on PATH
# for login shells.
export_for_login_shells() {
  local name=$1 var=$2 dir=$3
  # shellcheck disable=SC2016 # $PATH is for the login shell to expand
  printf 'export %s=%s\nexport PATH="$%s/bin:$PATH"\n' "$var" "$dir" "$var" >"/etc/profile.d/$name.sh"
  chmod 0644 "/etc/profile.d/$name.sh"
}

# Spark fails with UnknownHostException when the hostname does not resolve.
ensure_hostname_resolves() {
  local name
  # uname -n: the `hostname` command is not on every minimal image.
  name=$(uname -n)
  if getent hosts "$name" >/dev/null; then
    return 0
  fi
  [[ -s /etc/hosts ]] || printf '127.0.0.1\tlocalhost\n' >/etc/hosts
  printf '127.0.1.1\t%s\n' "$name" >>/etc/hosts
  getent hosts "$name" >/dev/null || die "hostname $name does not resolve even after adding it to /etc/hosts"
  log "hostname $name now resolves (added to /etc/hosts)"
}

# Where the image describes itself. Only tests point SPARK_PACKER_ETC elsewhere.
etc_dir() { printf '%s\n' "${SPARK_PACKER_ETC:-/etc}"; }

# set_environment VAR VALUE: VAR in /etc/environment, which PAM reads for
# every session, login or not (`ssh host command` included), replaced atomically.
set_environment() {
  local var=$1 value=$2 file tmp
  file=$(etc_dir)/environment
  tmp=$(mktemp "$file.XXXXXX")
  { grep -v "^$var=" "$file" 2>/dev/null || true; } >"$tmp"
  printf '%s="%s"\n' "$var" "$value" >>"$tmp"
  chmod 0644 "$tmp"
  mv "$tmp" "$file"
}

# environment_value VAR: VAR's value in /etc/environment, read, never sourced.
environment_value() {
  sed -n "s/^$1=\"\{0,1\}\([^\"]*\)\"\{0,1\}\$/\1/p" "$(etc_dir)/environment" | tail -n 1
}

# export_for_all_shells NAME VAR DIR: login shells through profile.d (with
# PATH), every other session through /etc/environment. Launch tools run
# commands over ssh without a login shell (spark-ec2 needs JAVA_HOME there).
export_for_all_shells() {
  export_for_login_shells "$1" "$2" "$3"
  set_environment "$2" "$3"
}

# record_contents KEY VALUE: one fact about the image, kept in
# /etc/spark-packer/contents and rendered into image.json at once.
record_contents() {
  local dir file tmp value
  dir=$(etc_dir)/spark-packer
  file=$dir/contents
  value=$(printf '%s' "$2" | tr -d '[:cntrl:]')
  mkdir -p "$dir"
  tmp=$(mktemp "$file.XXXXXX")
  { grep -v "^$1=" "$file" 2>/dev/null || true; } >"$tmp"
  printf '%s=%s\n' "$1" "$value" >>"$tmp"
  sort -o "$tmp" "$tmp"
  chmod 0644 "$tmp"
  mv "$tmp" "$file"
  write_image_json
}

json_string() {
  local s=${1//\\/\\\\}
  printf '"%s"' "${s//\"/\\\"}"
}

# /etc/spark-packer/image.json: every recorded fact, and the notes, as one
# JSON object for tools (and the manifest's reader) to check against.
write_image_json() {
  local dir key value line first=1
  dir=$(etc_dir)/spark-packer
  {
    printf '{\n'
    while IFS='=' read -r key value; do
      printf '  %s: %s,\n' "$(json_string "$key")" "$(json_string "$value")"
    done <"$dir/contents"
    printf '  "notes": ['
    if [[ -f $dir/notes ]]; then
      while IFS= read -r line; do
        ((first)) || printf ', '
        first=0
        json_string "$(printf '%s' "$line" | tr -d '[:cntrl:]')"
      done <"$dir/notes"
    fi
    printf ']\n}\n'
  } >"$dir/image.json.tmp"
  chmod 0644 "$dir/image.json.tmp"
  mv "$dir/image.json.tmp" "$dir/image.json"
}
