#!/usr/bin/env bash
# The sampler sweeps of docs/experiments/2026-11-30-video.md ("Second pass"): score a trained video
# job's export with the video suite at another guidance scale, or with the sampler's time shift
# replaced (in a copy of the export's config.json; training is untouched).
#   bash docs/experiments/scripts/video_sampler_sweep.sh RUN_DIR guidance 5
#   bash docs/experiments/scripts/video_sampler_sweep.sh RUN_DIR shift 8
# Prints the generation figures; the whole report lands in /tmp/video_sweep_<name>_<kind><value>/.
set -euo pipefail
run=${1:?run folder, e.g. runs/tiny_video}; kind=${2:?guidance or shift}; value=${3:?a number}
python=${PYTHON:-python}
name=$(basename "$run")
out=/tmp/video_sweep_${name}_${kind}${value}
model=$run/export
args=()
if [ "$kind" = shift ]; then
  model=$out.export
  rm -rf "$model" && cp -r "$run/export" "$model"
  "$python" -c "import json, sys; p = sys.argv[1]; c = json.load(open(p)); c['time_shift'] = c['clip_time_shift'] = float(sys.argv[2]); json.dump(c, open(p, 'w'))" "$model/config.json" "$value"
elif [ "$kind" = guidance ]; then
  args=(--guidance-scale "$value")
else
  echo "kind must be guidance or shift, got $kind" >&2; exit 2
fi
"$python" -m unimodal.evaluation --model "$model" --suite video --num-samples 200 "${args[@]}" --out "$out" >"$out.log" 2>&1
"$python" -c "import json, sys; m = json.load(open(sys.argv[1])); print(sys.argv[2], {k: round(v, 3) for k, v in m.items() if k.startswith(('gen_all_correct_', 'gen_shape'))})" "$out/metrics.json" "$name $kind $value"
