#!/usr/bin/env bash
# Installs Spark: download the tarball at SPARK_URL (spark-<version>-bin-<hadoop>.tgz),
# verify its SHA-512, unpack it to /opt/spark-<version>, link /opt/spark, set
# SPARK_HOME for every shell (and PATH for login shells), record it in
# image.json, and make the hostname resolve.
#
# Environment:
#   SPARK_VERSION         e.g. 3.5.3
#   SPARK_URL             the tarball's full URL (build-amis writes it)
#   SPARK_SHA512          the expected SHA-512, lower-case hex
#   SPARK_SHA512_SOURCE   where that value comes from, said in the log
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

version=${SPARK_VERSION:?SPARK_VERSION is not set}
url=${SPARK_URL:?SPARK_URL is not set}
source_label=${SPARK_SHA512_SOURCE:-the matrix}

[[ -f $BASE_MARKER ]] || die "no $BASE_MARKER: this system is not a spark-packer base image; run base.sh first or build on a base AMI"

name=$(basename "$url" .tgz)
[[ $name == "spark-$version-bin-"* ]] || die "SPARK_URL names $name, not a Spark $version tarball"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch_verified "$url" "$work/$name.tgz" "${SPARK_SHA512:-}" "$source_label"

unpack_and_link "$work/$name.tgz" "$name" "/opt/spark-$version" /opt/spark

export_for_all_shells spark SPARK_HOME /opt/spark
record_contents image "${SPARK_PACKER_IMAGE:-spark-$version}"
record_contents spark_version "$version"
record_contents spark_home /opt/spark

ensure_hostname_resolves
log "spark: Spark $version installed in /opt/spark-$version"
