#!/usr/bin/env bash
# Runs every cargo fuzz target for SECONDS (default 600), JOBS at a time (default 1), each
# process on its own core's worth of threads; prints libFuzzer's final stats per target.
#   bash fuzz/run.sh 600 2
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}" jobs="${2:-1}"
logs="${FUZZ_LOGS:-target/logs}"
mkdir -p "$logs"
cargo +nightly fuzz build -O --sanitizer none
targets=$(cargo +nightly fuzz list)
export RAYON_NUM_THREADS=1
echo "$targets" | xargs -P "$jobs" -I{} sh -c \
    "cargo +nightly fuzz run -O --sanitizer none {} -- -max_total_time=$secs -timeout=60 -rss_limit_mb=4096 \
     -print_final_stats=1 > $logs/{}.log 2>&1; echo \"{}: exit \$?, \$(grep -E '^stat::number_of_executed_units' $logs/{}.log)\""
