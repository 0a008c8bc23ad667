#!/usr/bin/env bash
# Runs the fuzz targets one after another under AFL++ (built by `make fuzz`), each until it has
# made 10^7 executions or its time budget is spent, then prints each one's figures from AFL's
# fuzzer_stats and copies any crash or hang into target/fuzz-out/<target>/findings/.
#
# Usage: tools/fuzz/campaign.sh [TARGET[:MINUTES] ...]   (default: every target, FUZZ_MINUTES each)
#   FUZZ_MINUTES   budget per target without its own (default 10)
#   FUZZ_EXECS     executions after which a target stops early (default 10000000)
#   FUZZ_OUT       AFL's output directories (default target/fuzz-out); a target whose directory
#                  exists resumes from it
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
binary=target/afl/release/tessera-fuzz
out=${FUZZ_OUT:-target/fuzz-out}
minutes=${FUZZ_MINUTES:-10}
execs=${FUZZ_EXECS:-10000000}
[ -x "$binary" ] || { echo "no $binary: run make fuzz-build first"; exit 1; }
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("$binary" --list | awk '{print $1}')
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_AUTORESUME=1
mkdir -p "$out"
for entry in "${targets[@]}"; do
  name=${entry%%:*}
  budget=$minutes
  [ "$entry" = "$name" ] || budget=${entry#*:}
  echo ">> $name: up to $execs executions or $budget minutes ($(date -u +%H:%M:%S))"
  cargo afl fuzz -i "tools/fuzz/corpus/$name" -o "$out/$name" -t 1000 -E "$execs" -V $((budget * 60)) \
    -- "$binary" "$name" >"$out/$name.log" 2>&1 || echo "   afl-fuzz exited with $? (see $out/$name.log)"
  stats=$out/$name/default/fuzzer_stats
  if [ -f "$stats" ]; then
    awk -v name="$name" '/^(execs_done|run_time|execs_per_sec|edges_found|total_edges|corpus_count|saved_crashes|saved_hangs) /{v[$1]=$3}
      END {printf "   %s: %s execs in %s s (%s/s), edges %s of %s, corpus %s, crashes %s, hangs %s\n",
        name, v["execs_done"], v["run_time"], v["execs_per_sec"], v["edges_found"], v["total_edges"],
        v["corpus_count"], v["saved_crashes"], v["saved_hangs"]}' "$stats"
    mkdir -p "$out/$name/findings"
    find "$out/$name/default/crashes" "$out/$name/default/hangs" -type f -name 'id:*' \
      -exec cp {} "$out/$name/findings/" \; 2>/dev/null || true
  fi
done
