#!/usr/bin/env bash
# The last provisioner: start a standalone master and one worker, submit the
# pi.py example and a pyspark DataFrame job, check their answers, stop both.
# Any failure fails the build, so an image that cannot run Spark never
# becomes an AMI.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# shellcheck source=/dev/null
source /etc/profile.d/spark.sh
[[ -x $SPARK_HOME/bin/spark-class ]] || die "no Spark in $SPARK_HOME: run spark.sh first"
getent hosts "$(uname -n)" >/dev/null || die "hostname $(uname -n) does not resolve: Spark would fail"

# What launch tools take for granted. A command over ssh is no login shell:
# it sees /etc/environment (through PAM) and nothing of profile.d.
log "smoke test: launch tools' needs"
python --version 2>&1 | grep -q '^Python 3\.' || die "smoke test: \`python\` is not Python 3: $(python --version 2>&1)"
wget --version >/dev/null 2>&1 || die "smoke test: no wget (spark-ec2's scripts use it)"
java_home=$(environment_value JAVA_HOME)
env_spark_home=$(environment_value SPARK_HOME)
# shellcheck disable=SC2016 # expanded by the clean shell, from its environment
env -i JAVA_HOME="$java_home" bash --noprofile --norc -c '"$JAVA_HOME/bin/java" -version' >/dev/null 2>&1 ||
  die "smoke test: JAVA_HOME='$java_home' from /etc/environment runs no java in a non-login shell"
[[ $env_spark_home == "$SPARK_HOME" ]] ||
  die "smoke test: /etc/environment has SPARK_HOME='$env_spark_home', profile.d '$SPARK_HOME'"
image_json=$(etc_dir)/spark-packer/image.json
python3 - "$image_json" "${SPARK_PACKER_IMAGE:-spark-${SPARK_VERSION:-}}" "${SPARK_VERSION:-}" "$java_home" <<'PY' ||
import json, sys
path, image, spark, java_home = sys.argv[1:]
doc = json.load(open(path))
want = {"image": image, "spark_version": spark, "java_home": java_home, "spark_home": "/opt/spark"}
wrong = {k: doc.get(k) for k, v in want.items() if doc.get(k) != v}
if wrong:
    sys.exit(f"{path}: {wrong}, expected {want}")
PY
  die "smoke test: $image_json does not say what this image is"
log "smoke test: python, wget, JAVA_HOME and SPARK_HOME outside login shells, and $image_json: ok"

# Everything on loopback, on ports the OS picks: the test needs no network.
export SPARK_LOCAL_IP=127.0.0.1 SPARK_DAEMON_MEMORY=512m PYSPARK_PYTHON=python3
work=$(mktemp -d)
pids=()
stop_cluster() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap stop_cluster EXIT

show_log() {
  log "last lines of $1:"
  tail -n 20 "$1" | sed 's/^/    /' || true
}

# wait_for LOG PATTERN PID WHAT: until PATTERN shows in LOG; fails if PID dies.
# A master starts in seconds on an instance; the limit is for slow emulation.
ready_limit=600
wait_for() {
  local file=$1 pattern=$2 pid=$3 what=$4 waited=0
  until grep -q -- "$pattern" "$file" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      show_log "$file"
      die "smoke test: the Spark $what exited before it was ready"
    fi
    if ((waited >= ready_limit)); then
      show_log "$file"
      die "smoke test: the Spark $what was not ready within ${ready_limit}s"
    fi
    sleep 1
    waited=$((waited + 1))
  done
}

java_says=$("$java_home/bin/java" -version 2>&1) || die "smoke test: $java_home/bin/java -version failed"
log "smoke test: Spark runs on ${java_says%%$'\n'*} ($(uname -m))"
log "smoke test: starting a standalone master"
"$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
  --host 127.0.0.1 --port 0 --webui-port 0 >"$work/master.log" 2>&1 &
pids+=("$!")
wait_for "$work/master.log" "Starting Spark master at spark://" "${pids[0]}" master
master_url=$(grep -o -m 1 'spark://127\.0\.0\.1:[0-9]*' "$work/master.log")
log "smoke test: master at $master_url"

"$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker \
  --host 127.0.0.1 --webui-port 0 --cores 1 --memory 1g "$master_url" >"$work/worker.log" 2>&1 &
pids+=("$!")
wait_for "$work/worker.log" "Successfully registered with master" "${pids[1]}" worker
log "smoke test: worker registered"

log "smoke test: spark-submit pi.py"
if ! "$SPARK_HOME/bin/spark-submit" --master "$master_url" --conf spark.ui.enabled=false \
  --driver-memory 512m --executor-memory 512m \
  "$SPARK_HOME/examples/src/main/python/pi.py" 10 >"$work/pi.out" 2>"$work/pi.err"; then
  show_log "$work/pi.err"
  die "smoke test: spark-submit pi.py failed"
fi
result=$(grep -m 1 '^Pi is roughly' "$work/pi.out" || true)
[[ $result == "Pi is roughly 3.1"* ]] || {
  show_log "$work/pi.out"
  die "smoke test: pi.py printed no 'Pi is roughly 3.1...' (got '$result')"
}
log "smoke test: $result"

# What most users run first: a DataFrame through pyspark, with a Python UDF,
# so the Java gateway and Python workers run, not only the JVM.
log "smoke test: a pyspark DataFrame job with a Python UDF"
cat >"$work/frame.py" <<'PY'
from pyspark.sql import SparkSession
from pyspark.sql.functions import udf

spark = SparkSession.builder.appName("spark-packer smoke test").getOrCreate()
square = udf(lambda n: n * n, "long")
frame = spark.createDataFrame([(n, n % 3) for n in range(1, 101)], ["n", "k"])
rows = frame.withColumn("sq", square("n")).groupBy("k").sum("sq").orderBy("k").collect()
print("DataFrame sums of squares by k:", [(row[0], row[1]) for row in rows])
spark.stop()
PY
if ! "$SPARK_HOME/bin/spark-submit" --master "$master_url" --conf spark.ui.enabled=false \
  --driver-memory 512m --executor-memory 512m "$work/frame.py" >"$work/frame.out" 2>"$work/frame.err"; then
  show_log "$work/frame.err"
  die "smoke test: the pyspark DataFrame job failed"
fi
result=$(grep -m 1 '^DataFrame sums of squares by k:' "$work/frame.out" || true)
# 1..100 grouped by n % 3: the sums of their squares.
[[ $result == "DataFrame sums of squares by k: [(0, 112761), (1, 116161), (2, 109428)]" ]] || {
  show_log "$work/frame.out"
  die "smoke test: the DataFrame job printed the wrong sums (got '$result')"
}
log "smoke test: $result"

stop_cluster
trap - EXIT
log "smoke test: passed; master and worker stopped"
