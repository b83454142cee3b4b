"""Re-run the settings of the VQA sweeps (docs/experiments/2026-11-26-vqa-studies.md) with the project's own
trainer and evaluator.

The sweeps of 2026-11-26 ran with plain-PyTorch scripts outside the repository that were not kept. This
driver runs the same settings, where the run config can express them, as ordinary main jobs:

    python -m unimodal.training --config configs/tiny.yaml name=<prefix><variant> <overrides...>

each of which trains, exports and evaluates (`eval.enabled` in tiny.yaml), then reads every
`runs/<name>/eval/metrics.json` and prints one markdown table. Figures will differ from the sweep tables
by about the seed noise (±0.05): other data pipeline (shards instead of freshly drawn scenes), other
padding, other kernels. The sweeps split batches into length buckets (`data.length_buckets`), which
packed rows have since replaced: the variants run one example per row (`data.max_tokens_per_row=0`)
where the sweep ran one part, and packed rows of 256 where it ran two; losses are the same either way.

    python docs/experiments/scripts/vqa_sweep.py --dry-run                 # print the commands
    python docs/experiments/scripts/vqa_sweep.py --check                   # parse every variant's config
    python docs/experiments/scripts/vqa_sweep.py --only b64_t8 --jobs 4    # run the matching variants, 4 at a time
    python docs/experiments/scripts/vqa_sweep.py --table                   # only print the table of finished runs

Settings the run config has no key for (Muon, an answer-loss weight, the ~4,600-of-5,600-step runs, the U-Net
patch adapter, the question before the image, caption-first VQA) are not in the list.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

# The batch-32 main job of 2026-11-26 (before batch 64 x 8 turns): width 256, 3 turns, one part per batch,
# 1,400 steps of 32. configs/tiny.yaml supplies the rest (mix 0.25/0.3/0.45, lr 1e-3, bf16 autocast, ...).
BATCH32 = ["model.hidden_size=256", "data.batch_size=32", "data.vqa_turns=3", "data.max_tokens_per_row=0",
           "schedule.total_steps=1400"]
# Batch 64 with 8 QA turns per VQA example, 1,400 steps (width 256 unless a variant says otherwise).
B64_T8 = [*BATCH32[:1], "data.batch_size=64", "data.vqa_turns=8", "data.max_tokens_per_row=256",
          "schedule.total_steps=1400"]
# Mixes are caption / vqa / generation weights.
MIX_VQA_HEAVY = "data.task_weights={caption: 0.2, vqa: 0.5, generation: 0.3}"
MIX_VQA_DENSE = "data.task_weights={caption: 0.15, vqa: 0.55, generation: 0.3}"
MIX_FEWER_GEN = "data.task_weights={caption: 0.32, vqa: 0.39, generation: 0.29}"

# (name, overrides, what the sweep reported for it: VQA on unseen images, one value per seed).
VARIANTS: list[tuple[str, list[str], str]] = [
    # First GPU sweep (22 trainings, H200): changes from the batch-32 setting.
    *[(f"b32_s{s}", [*BATCH32, f"seed={s}"], r) for s, r in ((0, "0.71"), (1, "0.78"), (2, "0.72"))],
    ("b32_lr2e-3", [*BATCH32, "optimizer.lr=2.0e-3"], "0.71 (captions 0.85)"),
    ("b32_lr3e-3", [*BATCH32, "optimizer.lr=3.0e-3"], "0.67 (captions 0.32)"),
    ("b32_heads8", [*BATCH32, "model.num_heads=8"], "0.74"),
    ("b32_w384", [*BATCH32, "model.hidden_size=384"], "0.73"),
    ("b32_l8", [*BATCH32, "model.num_layers=8"], "0.72"),
    ("b32_t8", [*BATCH32, "data.vqa_turns=8"], "0.76"),
    ("b32_tall", [*BATCH32, "data.vqa_turns=64"], "0.77 (every QA pair, ~16 turns)"),
    ("b64_t3", [*BATCH32, "data.batch_size=64"], "0.77"),
    ("b32_mix_vqa", [*BATCH32, MIX_VQA_HEAVY], "0.72"),
    *[(f"b32_2800_s{s}", [*BATCH32, "schedule.total_steps=2800", f"seed={s}"], r)
      for s, r in ((0, "0.81"), (1, "0.74"), (2, "0.77"))],
    ("b32_4200", [*BATCH32, "schedule.total_steps=4200"], "0.71"),
    ("b64_t8_s0", [*B64_T8, "seed=0"], "0.96"),
    # Second GPU sweep (32 trainings, H200): batch 64 x 8 turns and cheaper versions of it.
    *[(f"b64_t8_s{s}", [*B64_T8, f"seed={s}"], r) for s, r in ((1, "0.89"), (2, "0.83"))],
    *[(f"b64_t8_w192_s{s}", [*B64_T8, "model.hidden_size=192", f"seed={s}"], r) for s, r in ((0, "0.91"), (1, "0.90"))],
    *[(f"b64_t8_l4_s{s}", [*B64_T8, "model.num_layers=4", f"seed={s}"], r) for s, r in ((0, "0.93"), (1, "0.75"))],
    *[(f"b64_t8_1100_s{s}", [*B64_T8, "schedule.total_steps=1100", f"seed={s}"], r) for s, r in ((0, "0.81"), (1, "0.79"))],
    *[(f"b50_t8_s{s}", [*B64_T8, "data.batch_size=50", MIX_FEWER_GEN, f"seed={s}"], r)
      for s, r in ((0, "0.72"), (1, "0.85"), (2, "0.90"))],
    ("b50_t12", [*B64_T8, "data.batch_size=50", MIX_FEWER_GEN, "data.vqa_turns=12"], "0.90"),
    *[(f"b50_t8_l5_s{s}", [*B64_T8, "data.batch_size=50", MIX_FEWER_GEN, "model.num_layers=5", f"seed={s}"], r)
      for s, r in ((0, "0.80"), (1, "0.90"))],
    *[(f"b50_t8_1100_s{s}", [*B64_T8, "data.batch_size=50", MIX_FEWER_GEN, "schedule.total_steps=1100", f"seed={s}"], r)
      for s, r in ((0, "0.81"), (1, "0.86"))],
    *[(f"b48_t8_s{s}", [*B64_T8, "data.batch_size=48", f"seed={s}"], "0.74") for s in (0, 1)],
    *[(f"b32_t8_mix_dense_s{s}", [*BATCH32, "data.vqa_turns=8", MIX_VQA_DENSE, f"seed={s}"], r)
      for s, r in ((0, "0.71"), (1, "0.75"))],
    *[(f"b64_t8_p8_s{s}", [*B64_T8, "model.patch_size=8", f"seed={s}"], r) for s, r in ((0, "0.89"), (1, "0.74"))],
    ("b32_p8", [*BATCH32, "model.patch_size=8"], "0.69"),
    ("b48_t8_p8", [*B64_T8, "data.batch_size=48", "model.patch_size=8"], "0.76"),
    ("b64_tall_p8", [*B64_T8, "data.vqa_turns=64", "model.patch_size=8"], "0.78"),
    ("b32_wd0.1", [*BATCH32, "optimizer.weight_decay=0.1"], "0.71"),
    # CPU runs (2 cores) of batch 64 x 8 turns through the trainer.
    ("cpu_b64_t8_w192_free", [*B64_T8, "model.hidden_size=192", "synthetic.num_train=90000",
                              "data.row_multiple=1", "data.length_multiple=1"], "0.858 (24 min 50 s)"),
    ("cpu_b50_t8_l5", [*B64_T8, "data.batch_size=50", MIX_FEWER_GEN, "model.hidden_size=192", "model.num_layers=5",
                       "synthetic.num_train=40000"], "0.73 (15 min 57 s)"),
    ("cpu_b64_t8_w192_fixed", [*B64_T8, "model.hidden_size=192", "synthetic.num_train=90000"], "0.81 (14 min 46 s)"),
    ("cpu_b32_to_b64_t8_800", [*BATCH32, "data.batch_size=64", "data.vqa_turns=8", "schedule.total_steps=800"],
     "0.70 (22 min 15 s)"),
]

METRICS = ("caption_exact", "vqa_accuracy", "gen_all_correct_seen", "gen_all_correct_heldout")


def command(config: str, name: str, overrides: list[str], extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "unimodal.training", "--config", config, f"name={name}", *overrides, *extra]


def check(config: str, runs: list[tuple[str, list[str]]]) -> int:
    """Parse every variant's run config (unknown keys and bad values raise); trains nothing."""
    from unimodal.training.config import load_run_config

    for name, overrides in runs:
        load_run_config(config, [f"name={name}", *overrides])
        print(f"ok  {name}")
    return 0


def run_all(runs: list[tuple[str, list[str]]], config: str, extra: list[str], jobs: int, log_dir: Path,
            threads: int | None) -> int:
    """Run the variants, `jobs` at a time; each one's output goes to log_dir/<name>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    pending, active, failed = list(runs), [], []
    while pending or active:
        while pending and len(active) < jobs:
            name, overrides = pending.pop(0)
            cmd = command(config, name, overrides, extra)
            log = open(log_dir / f"{name}.log", "w")  # closed when the process ends
            print(f"start {name}: {shlex.join(cmd)}", flush=True)
            active.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        for item in list(active):
            name, proc, log = item
            if proc.poll() is not None:
                log.close()
                active.remove(item)
                print(f"done  {name}: exit code {proc.returncode}", flush=True)
                if proc.returncode != 0:
                    failed.append(name)
        time.sleep(2)
    if failed:
        print(f"failed: {', '.join(failed)} (logs in {log_dir})", file=sys.stderr)
    return 1 if failed else 0


def table(runs: list[tuple[str, list[str]]], reported: dict[str, str], runs_dir: Path) -> str:
    """A markdown table of each run's eval/metrics.json (— where a run has none yet)."""
    lines = ["| variant | overrides | reported VQA | caption exact | VQA | gen seen | gen held-out |",
             "|---|---|---|---|---|---|---|"]
    for name, overrides in runs:
        path = runs_dir / name / "eval" / "metrics.json"
        metrics = json.loads(path.read_text()) if path.is_file() else {}
        cells = [f"{metrics[k]:.3f}" if isinstance(metrics.get(k), (int, float)) else "—" for k in METRICS]
        shown = " ".join(o for o in overrides if not o.startswith("name="))
        lines.append(f"| {name} | `{shown}` | {reported.get(name, '')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml", help="the run config every variant starts from")
    parser.add_argument("--only", action="append", default=[],
                        help="run only variants whose name contains this (repeatable)")
    parser.add_argument("--prefix", default="vqa_", help="run names are <prefix><variant>, under runs/")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="an override appended to every variant, e.g. schedule.total_steps=50 for a smoke run")
    parser.add_argument("--jobs", type=int, default=1, help="trainings run at the same time")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for each training")
    parser.add_argument("--runs-dir", default="runs", help="where the trainer writes runs/<name>/")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    parser.add_argument("--check", action="store_true", help="parse every variant's config and exit")
    parser.add_argument("--table", action="store_true", help="only print the table of the runs found")
    args = parser.parse_args(argv)

    chosen = [v for v in VARIANTS if not args.only or any(s in v[0] for s in args.only)]
    if not chosen:
        parser.error(f"no variant matches {args.only}; names: {', '.join(v[0] for v in VARIANTS)}")
    runs = [(args.prefix + name, overrides) for name, overrides, _ in chosen]
    reported = {args.prefix + name: note for name, _, note in chosen}

    if args.dry_run:
        for name, overrides in runs:
            print(shlex.join(command(args.config, name, overrides, args.extra)))
        return 0
    if args.check:
        return check(args.config, [(name, [*overrides, *args.extra]) for name, overrides in runs])
    code = 0
    if not args.table:
        code = run_all(runs, args.config, args.extra, max(1, args.jobs), Path(args.runs_dir) / "vqa_sweep_logs",
                       args.threads)
    print(table(runs, reported, Path(args.runs_dir)))
    return code


if __name__ == "__main__":
    sys.exit(main())
