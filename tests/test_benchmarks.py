"""The training benchmarks run in-process on the debug preset and print sane JSON (no timing asserts)."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks/` is a folder of scripts, not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import common, sampling, scaling, train_throughput  # noqa: E402
from unimodal.config import ModelConfig  # noqa: E402
from unimodal.layout import IGNORE_INDEX  # noqa: E402

THROUGHPUT_KEYS = {"samples_per_s", "tokens_per_s", "seconds_per_step", "peak_rss_mb", "params", "flops_per_step",
                   "achieved_flops", "matmul_flops", "flops_ratio", "dtype", "threads", "preset", "batch_size",
                   "seq_len", "distributed"}


def last_json_line(text: str) -> dict:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert lines, text
    return json.loads(lines[-1])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_train_throughput_prints_sane_json(capsys, dtype):
    result = train_throughput.main(["--preset", "debug", "--steps", "2", "--warmup", "1", "--batch-size", "3",
                                    "--dtype", dtype, "--matmul-size", "256"])
    printed = last_json_line(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert THROUGHPUT_KEYS <= set(printed)
    assert (printed["preset"], printed["dtype"], printed["batch_size"]) == ("debug", dtype, 3)
    assert printed["threads"] == torch.get_num_threads()
    for key in ("samples_per_s", "tokens_per_s", "seconds_per_step", "peak_rss_mb", "params", "flops_per_step",
                "achieved_flops", "matmul_flops", "seq_len"):
        assert printed[key] > 0, key
    assert 0 < printed["flops_ratio"] < 2
    assert printed["tokens_per_s"] == pytest.approx(printed["samples_per_s"] * printed["real_tokens"] / printed["batch_size"])
    assert "DeepSpeed" in printed["distributed"]
    assert printed["device_type"] == "cpu" and printed["device"]
    assert printed["matmul_size"] == 256
    assert "mfu" not in printed and "peak_gpu_mem_mb" not in printed  # CUDA-only fields


def test_train_throughput_packed_rows_count_the_work_of_the_packed_batch(capsys):
    args = ["--preset", "debug", "--steps", "1", "--warmup", "0", "--batch-size", "6", "--matmul-size", "256",
            "--vqa-turns", "6"]
    whole = train_throughput.main(args)
    packed = train_throughput.main(args + ["--max-tokens-per-row", "160"])
    assert whole["rows"] == 6 and packed["rows"] < 6
    assert whole["padded_positions"] == 6 * whole["seq_len"]  # one example per row, padded to the longest
    assert whole["real_tokens"] == packed["real_tokens"] <= packed["padded_positions"] < whole["padded_positions"]
    assert packed["flops_dense"] < whole["flops_dense"]  # fewer padded positions, less work asked


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is missing")
def test_train_throughput_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_throughput.main(["--preset", "debug", "--device", "cuda"])
    assert exit_info.value.code == 2  # argparse's usage error, before any model is built
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err


def test_matmul_probe_sizes_and_gpu_peaks():
    assert common.MatmulProbe(torch.float32, size=None, reps=1).size == 2048  # the CPU default, unchanged
    assert train_throughput.parse_args(["--device", "cpu"]).matmul_size is None
    peaks = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12, "NVIDIA H100 PCIe": 756e12,
             "NVIDIA A100-SXM4-80GB": 312e12, "NVIDIA A100 80GB PCIe": 312e12, "NVIDIA H100 NVL": None,
             "NVIDIA GeForce RTX 4090": None}
    assert {name: common.peak_bf16_flops(name) for name in peaks} == peaks


def test_sampling_benchmark_prints_speeds_of_both_paths(capsys):
    result = sampling.main(["--preset", "debug", "--threads", str(torch.get_num_threads()), "--repeats", "1",
                            "--decode-batch-sizes", "1", "--new-tokens", "4", "--steps", "2"])
    printed = last_json_line(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(result))
    assert printed["decode_cache"] == "static buffer (unimodal.decode_step)"
    for key in ("decode_batch_1_tokens_per_s_cached", "decode_batch_1_tokens_per_s_uncached",
                "sample_s_per_image_2_steps_cached", "sample_s_per_image_2_steps_uncached"):
        assert printed[key] > 0, key
    # The speed-up comes from the unrounded speeds; the printed speeds are rounded to 0.1 tokens/s, which
    # on a loaded machine (a few tokens/s) moves their ratio by more than any fixed relative tolerance.
    cached, uncached = printed["decode_batch_1_tokens_per_s_cached"], printed["decode_batch_1_tokens_per_s_uncached"]
    low, high = (cached - 0.05) / (uncached + 0.05), (cached + 0.05) / max(uncached - 0.05, 1e-9)
    assert low - 0.005 <= printed["decode_batch_1_cache_speedup"] <= high + 0.005


def test_scaling_prints_one_line_per_point_and_a_plot(capsys, tmp_path):
    results = scaling.main(["--preset", "debug", "--image-tokens", "4", "16", "--sweep-batch-size", "2",
                            "--batch-sizes", "1", "2", "--steps", "1", "--warmup", "0", "--matmul-size", "256",
                            "--out", str(tmp_path)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(lines) == len(results) == 4
    assert [(p["sweep"], p["num_image_tokens"], p["batch_size"]) for p in lines] == [
        ("image_tokens", 4, 2), ("image_tokens", 16, 2), ("batch", 16, 1), ("batch", 16, 2)]
    for point in lines:
        for key in ("seconds_per_step", "peak_rss_mb", "flops_per_step", "predicted_seconds", "matmul_flops"):
            assert point[key] > 0, key
        assert 0 < point["flops_ratio"] < 2
    assert lines[1]["seq_len"] > lines[0]["seq_len"]
    assert lines[1]["flops_per_step"] > lines[0]["flops_per_step"]
    assert (tmp_path / "scaling.png").stat().st_size > 0
    assert len((tmp_path / "scaling.jsonl").read_text().splitlines()) == 4


def test_synthetic_batch_mixes_the_three_tasks():
    tokenizer = common.benchmark_tokenizer()
    config = ModelConfig.preset("debug")
    batch = common.synthetic_batch(config, tokenizer, batch_size=6, caption_tokens=12)
    assert batch.num_images == 6
    assert batch.image_is_target.tolist() == [True, False, False] * 2  # generation, caption, vqa
    labelled = (batch.lm_labels != IGNORE_INDEX).sum(1).tolist()
    assert labelled[0] == 0 and labelled[1] == 13  # caption: 12 tokens + <eos>
    assert batch.num_examples == batch.num_rows == 6
    packed = common.synthetic_batch(config, tokenizer, batch_size=6, caption_tokens=12, max_tokens_per_row=128)
    assert packed.num_rows < 6 and packed.num_tokens == batch.num_tokens


def test_flop_formula_matches_a_hand_count():
    config = ModelConfig.preset("tiny")  # D=256, F=1024, L=6, V=512, 4 heads, no GQA
    per_layer = 4 * 256 * 256 + 3 * 256 * 1024
    assert common.matmul_params(config) == 6 * per_layer + 256 * 512
    flops = common.step_flops(config, batch_size=2, seq_len=80, num_images=2)
    assert flops.dense == 6 * common.matmul_params(config) * 2 * 80
    assert flops.attention == 3 * 6 * 2 * (2 * 2 * 80**2 * 256)
    assert flops.total == flops.dense + flops.attention + flops.adapters
    # every Linear weight of the model is either in the dense count or an adapter (none left out)
    from unimodal.model import UniModalModel

    model = UniModalModel(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    adapters = 2 * config.patch_dim * 256 + 256 * 256 + 256 * 256 + 256 * 512
    adapters += 256 * 256 if config.patch_adapter == "mlp" else 0  # the MLP adapter's second Linear
    assert linear == common.matmul_params(config) + adapters


def test_packing_benchmark_runs_the_same_examples_in_fewer_positions(capsys):
    from benchmarks import packing

    result = packing.main(["--max-tokens", "0", "256", "--num-batches", "1", "--repeats", "1", "--no-compile",
                           "--hidden-size", "64", "--threads", "2"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == result
    alone, packed = result["by_max_tokens_per_row"]["0"], result["by_max_tokens_per_row"]["256"]
    assert alone["real_tokens"] == packed["real_tokens"] and alone["rows"] == 64 > packed["rows"]
    assert packed["padding"] < alone["padding"] and packed["length"] <= 256
    assert result["device"] and alone["seconds_per_step"] > 0
