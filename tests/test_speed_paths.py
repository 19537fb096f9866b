"""The fast paths give the plain path's numbers: shared-prefix scoring for decoder RMs, bf16 autocast, devices
and precisions resolved once with a clear choice, and the training budget in steps."""

import json

import numpy as np
import pytest
import torch

from rmkit.data import load_preferences
from rmkit import hardware
from rmkit.hardware import autocast, resolve_device, resolve_precision
from rmkit.models import RewardModel
from rmkit.prefix import common_prefix_length, score_pairs_shared_prefix, supports_shared_prefix
from rmkit.scoring import score_token_pairs
from rmkit.training import _mixed_precision


@pytest.fixture(scope="module")
def pairs(shared_data):
    return load_preferences(shared_data / "hh-rlhf" / "helpful-base" / "test.jsonl.gz", limit=24).pairs


def test_common_prefix_leaves_each_side_a_token():
    assert common_prefix_length([1, 2, 3, 4], [1, 2, 5]) == 2
    assert common_prefix_length([1, 2, 3], [1, 2, 3, 4]) == 2  # one side would be empty: stop one short
    assert common_prefix_length([7], [8, 9]) == 0


def test_shared_prefix_equals_plain_scoring_for_a_decoder(tiny_llama, pairs):
    """Each pair's prompt once, both responses on its KV cache: the same rewards as two full passes (fp32, 1e-4),
    with pairs of different prompt lengths, ties in prefix and a batch size that splits them unevenly."""
    rm = RewardModel.from_pretrained(tiny_llama, max_length=1024)  # no truncation: truncated sides share nothing
    assert supports_shared_prefix(rm)
    c, r = rm.encode_pairs(pairs)
    assert np.mean([common_prefix_length(a, b) / len(a) for a, b in zip(c, r)]) > 0.3  # the prompt is shared
    plain = score_token_pairs(rm, c, r, batch_size=10)
    shared = score_pairs_shared_prefix(rm, c, r, batch_size=10)
    assert np.abs(plain[0] - shared[0]).max() < 1e-4 and np.abs(plain[1] - shared[1]).max() < 1e-4
    routed = score_token_pairs(rm, c, r, batch_size=10, shared_prefix=True)
    assert np.allclose(routed[0], shared[0]) and np.allclose(routed[1], shared[1])


def test_encoders_take_the_plain_path(tiny_bert, pairs):
    rm = RewardModel.from_pretrained(tiny_bert, max_length=64)
    assert not supports_shared_prefix(rm)
    c, r = rm.encode_pairs(pairs[:6])
    assert np.allclose(score_token_pairs(rm, c, r, shared_prefix=True)[0], score_token_pairs(rm, c, r)[0])
    with pytest.raises(ValueError, match="not a decoder"):
        score_pairs_shared_prefix(rm, c, r)


def test_devices_and_precisions_are_resolved_and_said(capsys, monkeypatch, tiny_bert, pairs, tmp_path):
    cpu = resolve_device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")
    # auto on a CPU follows the measured bf16 matmul speedup (the machines of this project: 0.8x and 3x); a CPU-only
    # machine, also where a GPU is (training's auto asks torch whether there is one)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for gain, has_bf16, chosen in ((3.0, True, "bf16"), (0.8, True, "fp32"), (0.0, False, "fp32")):
        monkeypatch.setattr(hardware, "cpu_bf16_speedup", lambda gain=gain: gain)
        monkeypatch.setattr(hardware, "cpu_has_bf16", lambda has_bf16=has_bf16: has_bf16)
        assert resolve_precision("auto", cpu) == chosen
        assert f"running on cpu in {chosen}" in capsys.readouterr().err
        # training's auto (accelerate's names) keeps fp32 ("no") on any CPU, fast bf16 or not, as PPO's does
        assert _mixed_precision("auto") == "no" and resolve_precision("auto", cpu, training=True) == "fp32"
    assert _mixed_precision("bf16") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert _mixed_precision("auto") == "bf16"
    capsys.readouterr()
    monkeypatch.undo()
    torch.manual_seed(0)
    gain = hardware.measure_cpu_bf16_speedup()  # the real probe: a ratio of two timings, 0 without bf16 instructions
    assert (gain > 0) == hardware.cpu_has_bf16() and np.isfinite(gain)
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))  # the probe leaves a job's seeded random numbers as they were
    # Measured once per machine and kept: a later process reads it back instead of timing a loaded machine again.
    monkeypatch.setenv("RMKIT_CACHE", str(tmp_path))
    hardware.cpu_bf16_speedup.cache_clear()
    first = hardware.cpu_bf16_speedup()
    kept = json.loads((tmp_path / "hardware.json").read_text())
    assert list(kept.values()) == [first] and "torch" in next(iter(kept))
    (tmp_path / "hardware.json").write_text(json.dumps({k: 9.0 for k in kept}))
    hardware.cpu_bf16_speedup.cache_clear()
    assert hardware.cpu_bf16_speedup() == 9.0 and resolve_precision("auto", cpu, announce=False) == (
        "bf16" if hardware.cpu_has_bf16() else "fp32")
    hardware.cpu_bf16_speedup.cache_clear()
    monkeypatch.undo()
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision must be"):
        resolve_precision("fp16", cpu)
    rm = RewardModel.from_pretrained(tiny_bert, max_length=64)
    c, r = rm.encode_pairs(pairs[:8])
    fp32 = score_token_pairs(rm, c, r)[0]
    bf16 = score_token_pairs(rm, c, r, precision="bf16")[0]
    assert not np.array_equal(fp32, bf16) and np.abs(fp32 - bf16).max() < 0.05  # autocast ran, and stayed close
    with autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
