#!/usr/bin/env bash
# Installs Hadoop next to Spark, when the matrix asks for it: download
# the tarball at HADOOP_URL (hadoop-<version>.tar.gz), verify its SHA-512, unpack it to
# /opt/hadoop-<version>, link /opt/hadoop, set HADOOP_HOME and PATH for
# every shell (PATH for login shells), and check that `hadoop version` names the version.
#
# Environment:
#   HADOOP_VERSION        e.g. 3.3.6
#   HADOOP_URL            the tarball's full URL (build-amis writes it)
#   HADOOP_SHA512         the expected SHA-512, lower-case hex
#   HADOOP_SHA512_SOURCE  where that value comes from, said in the log
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

version=${HADOOP_VERSION:?HADOOP_VERSION is not set}
url=${HADOOP_URL:?HADOOP_URL is not set}
name=hadoop-$version
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch_verified "$url" "$work/$name.tar.gz" "${HADOOP_SHA512:-}" \
  "${HADOOP_SHA512_SOURCE:-the matrix}"

unpack_and_link "$work/$name.tar.gz" "$name" "/opt/$name" /opt/hadoop

export_for_all_shells hadoop HADOOP_HOME /opt/hadoop

# All of its output first, then the first line: `| head -n 1` would close the
# pipe early, and pipefail would fail on hadoop's SIGPIPE now and then.
output=$(/opt/hadoop/bin/hadoop version 2>&1) || die "hadoop version failed: $output"
reported=${output%%$'\n'*}
[[ $reported == "Hadoop $version"* ]] || die "hadoop version says '$reported', expected Hadoop $version"
record_contents hadoop_version "$version"
log "hadoop: $reported installed in /opt/$name"
