#!/usr/bin/env bash
# The base image: OS security updates, Python 3 with pip (and a `python`
# command), Java $JAVA_VERSION (the matrix picks one the OS packages and the
# image's Spark runs on) with JAVA_HOME for every shell, pssh, wget and
# common tools, Ganglia's gmond where the OS packages it, and image.json.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

detect_os
java_major=${JAVA_VERSION:-17}
[[ $java_major =~ ^[0-9]+$ ]] || die "JAVA_VERSION '$java_major' is not a Java major version such as 17"

log "applying OS security updates"
case "$OS_FAMILY" in
  debian)
    retry 3 5 pkg update
    pkg upgrade
    ;;
  amzn2023) pkg upgrade --security ;;
  amzn2) pkg update --security ;;
esac

choose_base_packages "$java_major"
java=$BASE_JAVA
tools=("${BASE_TOOLS[@]}")
gmond=$BASE_GMOND

pkg_available "$java" ||
  die "$java is not in $OS_ID $OS_VERSION's repositories: pick a Java it packages for this OS family in packer/matrix.json"
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

# All of java's output, then its first line: `| head -n 1` under pipefail
# fails now and then when java is still writing as head closes the pipe.
java_says=$(java -version 2>&1) || die "java -version failed: $java_says"
java_version=${java_says%%$'\n'*}
# Java 8 calls itself "1.8.0_…"; later ones "17.0.…".
want='"'$java_major'.'
((java_major == 8)) && want='"1.8.'
[[ $java_version == *"$want"* ]] || die "Java $java_major is not the default java: $java_version"
python3 -m pip --version >/dev/null || die "pip for Python 3 is missing"

# flintrock runs `python ...` before it installs python3 (its issue #227).
if ! command -v python >/dev/null; then
  if [[ $OS_FAMILY == debian ]] && pkg_available python-is-python3; then
    retry 3 10 pkg_install python-is-python3
  else
    ln -sfn "$(command -v python3)" /usr/local/bin/python
    log "python: linked /usr/local/bin/python to python3"
  fi
fi
if ! python --version 2>&1 | grep -q '^Python 3\.'; then
  note "python: is $(python --version 2>&1) here (the OS needs it); python3 is Python 3"
fi

# JAVA_HOME for login shells and for commands run over ssh (spark-ec2's).
java_home=$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")
[[ -x $java_home/bin/java ]] || die "cannot tell JAVA_HOME: $java_home/bin/java is not the java on PATH"
export_for_all_shells java JAVA_HOME "$java_home"
record_contents image "${SPARK_PACKER_IMAGE:-base}"
record_contents os "$OS_ID $OS_VERSION"
record_contents java "$java_version"
record_contents java_home "$java_home"
record_contents python "$(python3 --version 2>&1)"
record_contents spark_version none
record_contents hadoop_version none
install -d -m 0755 "$(dirname "$BASE_MARKER")"
printf 'os=%s %s\njava=%s\npython=%s\n' "$OS_ID" "$OS_VERSION" "$java_version" "$(python3 --version)" >"$BASE_MARKER"
log "base: done ($java_version; $(python3 --version))"
