from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vidgpt.attention import Backend, use_backend
from vidgpt.benchmarks import kvcache as bench
from vidgpt.diffusion import GaussianDiffusion, RectifiedFlow
from vidgpt.kv_cache import TemporalKVCache, apply_rope, rope_angles
from vidgpt.model import VidGPT
from vidgpt.sampling import (
    ModelCall,
    SamplingSpec,
    frames_before_eviction,
    generate,
    generate_as,
    generation_flops,
    model_calls,
    sampling_autocast,
)
from vidgpt.testing import randomize_weights_

from conftest import TINY_NO_TEXT, tiny_model

PROCESSES = [GaussianDiffusion(), RectifiedFlow()]
B, C, H, W = 2, 4, 8, 8


def _prompt(frames: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(B, frames, C, H, W, generator=torch.Generator().manual_seed(frames)).to(dtype)


def _gen(model, diffusion, prompt, n, **kw):  # noqa: ANN001, ANN003, ANN202
    return generate(model, diffusion, prompt, n, generator=torch.Generator().manual_seed(11), **kw)


def _assert_roundoff(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal to float32 round-off, relative to the values' scale (DDIM amplifies an untrained network's
    output by up to 1/sqrt(alpha_bar) ~ 150, so frames reach magnitudes of hundreds)."""
    scale = b.abs().max().clamp_min(1.0)
    assert (a - b).abs().max() <= 2e-6 * scale, float((a - b).abs().max() / scale)


# (prompt length, chunk, window, frames): the cache never evicts while these frames are generated
NO_EVICTION = [(1, 1, 8, 7), (1, 2, 8, 8), (3, 4, 12, 9), (2, 3, 11, 9), (5, 5, 10, 5), (0, 2, 8, 6)]  # P = 0: text to video


@pytest.mark.parametrize("diffusion", PROCESSES, ids=["ddpm", "flow"])
@pytest.mark.parametrize("P,chunk,window,n", NO_EVICTION)
def test_cache_equals_no_cache_before_eviction(diffusion, P: int, chunk: int, window: int, n: int) -> None:  # noqa: ANN001
    model = tiny_model(text=False)
    assert frames_before_eviction(P, n, chunk=chunk, window=window) == n
    prompt = _prompt(P)
    common = dict(chunk=chunk, window=window, steps=4)
    cached = _gen(model, diffusion, prompt, n, use_cache=True, **common)
    plain = _gen(model, diffusion, prompt, n, use_cache=False, **common)
    assert cached.shape == (B, P + n, C, H, W)
    assert torch.equal(cached[:, :P], prompt)
    _assert_roundoff(cached, plain)


@pytest.mark.parametrize("diffusion", PROCESSES, ids=["ddpm", "flow"])
def test_cache_equals_no_cache_in_float64(diffusion) -> None:  # noqa: ANN001
    """Without float32 round-off the two paths are the same computation."""
    model = tiny_model(text=True, dtype=torch.float64)
    prompt = _prompt(2, torch.float64)
    text = torch.randn(B, 5, 16, dtype=torch.float64)
    kw = dict(chunk=3, window=9, steps=5, text=text)
    a = _gen(model, diffusion, prompt, 7, use_cache=True, **kw)
    b = _gen(model, diffusion, prompt, 7, use_cache=False, **kw)
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("diffusion", PROCESSES, ids=["ddpm", "flow"])
def test_cfg_with_cache_equals_cfg_without(diffusion) -> None:  # noqa: ANN001
    model = tiny_model(text=True)
    prompt = _prompt(2)
    text = torch.randn(B, 6, 16)
    mask = torch.ones(B, 6, dtype=torch.bool)
    mask[0, 4:] = False
    kw = dict(chunk=2, window=8, steps=4, text=text, text_mask=mask, cfg_scale=4.0)
    guided = _gen(model, diffusion, prompt, 6, use_cache=True, **kw)
    _assert_roundoff(guided, _gen(model, diffusion, prompt, 6, use_cache=False, **kw))
    # guidance does something: it differs from the conditional sample
    plain = _gen(model, diffusion, prompt, 6, **{**kw, "cfg_scale": 1.0})
    assert (guided - plain).abs().max() > 1e-3 * plain.abs().max()


def test_cfg_combines_two_separately_run_branches() -> None:
    """The batched CFG sampler equals guidance computed from two independent model calls (each branch
    with its own cache) by hand, on one denoising step."""
    model = tiny_model(text=True)
    diffusion = RectifiedFlow()
    prompt, text, s = _prompt(2), torch.randn(B, 4, 16), 3.0
    out = _gen(model, diffusion, prompt, 2, chunk=2, window=4, steps=1, text=text, cfg_scale=s)
    _assert_roundoff(out[:, 2:], _one_step_by_hand(model, diffusion, prompt, text, cfg_scale=s))


def _one_step_by_hand(model, diffusion, prompt, text, *, cfg_scale, context_scale=1.0, guidance_noise=0.0):  # noqa: ANN001, ANN202
    """The first 2-frame chunk after `prompt` of a 1-step sampler, from separate model calls: each text
    branch with its own cache; with context_scale != 1 also the chunk alone at the same positions, or with
    guidance_noise > 0 the chunk after the prompt noised to that fraction (its noise drawn first)."""
    P = prompt.shape[1]
    gen = torch.Generator().manual_seed(11)  # _gen's seed: the same noise
    noised_prompt, t_noised = None, None
    if guidance_noise:
        t_free = diffusion.time_at(torch.full((B, P), guidance_noise))
        noised_prompt = diffusion.add_noise(prompt, torch.randn(prompt.shape, generator=gen), t_free)
        t_noised = diffusion.model_time(t_free)
    x = torch.randn(B, 2, C, H, W, generator=gen)
    t = diffusion.model_time(torch.full((B, 2), 1.0))
    with torch.no_grad():
        branch = {}
        for name, txt in (("cond", text), ("null", None)):
            cache = TemporalKVCache(4)
            model(prompt, torch.zeros(B, P), text=txt, cache=cache, write_cache=True)
            branch[name] = model(x, t, text=txt, cache=cache)
            if context_scale != 1.0:
                if noised_prompt is None:
                    alone = model(x, t, text=txt, frame_offset=P)
                else:  # no cache: the noised prompt and the chunk in one call
                    alone = model(torch.cat([noised_prompt, x], 1), torch.cat([t_noised, t], 1), text=txt)[:, P:]
                branch[name] = alone + context_scale * (branch[name] - alone)
    v = branch["null"] + cfg_scale * (branch["cond"] - branch["null"])
    return diffusion.step(v, x, 1.0, 0.0)


@pytest.mark.parametrize("diffusion", PROCESSES, ids=["ddpm", "flow"])
def test_context_guidance_with_cache_equals_without_and_does_something(diffusion) -> None:  # noqa: ANN001
    model = tiny_model(text=True)
    prompt, text = _prompt(2), torch.randn(B, 6, 16)
    kw = dict(chunk=2, window=8, steps=4, text=text, cfg_scale=3.0, context_scale=2.5)
    guided = _gen(model, diffusion, prompt, 6, use_cache=True, **kw)
    _assert_roundoff(guided, _gen(model, diffusion, prompt, 6, use_cache=False, **kw))
    plain = _gen(model, diffusion, prompt, 6, **{**kw, "context_scale": 1.0})
    assert (guided - plain).abs().max() > 1e-3 * plain.abs().max()
    assert torch.equal(plain, _gen(model, diffusion, prompt, 6, **{k: v for k, v in kw.items() if k != "context_scale"}))


def test_context_guidance_combines_the_chunk_with_and_without_earlier_frames() -> None:
    """One denoising step of context guidance, rebuilt by hand from two separate calls: the chunk after
    the prompt (cached) and the chunk alone at the same positions; with text guidance applied after it
    on each text branch."""
    model = tiny_model(text=True)
    diffusion = RectifiedFlow()
    prompt, text, s, g = _prompt(3), torch.randn(B, 4, 16), 2.0, 3.0
    out = _gen(model, diffusion, prompt, 2, chunk=2, window=4, steps=1, text=text, cfg_scale=g, context_scale=s)
    _assert_roundoff(out[:, 3:], _one_step_by_hand(model, diffusion, prompt, text, cfg_scale=g, context_scale=s))
    # text to video: the first chunk has no earlier frame, so guidance on them changes nothing there
    empty = _prompt(0)
    a = _gen(model, diffusion, empty, 4, chunk=2, window=4, steps=2, text=text, context_scale=s)
    b = _gen(model, diffusion, empty, 4, chunk=2, window=4, steps=2, text=text)
    assert torch.equal(a[:, :2], b[:, :2]) and not torch.equal(a[:, 2:], b[:, 2:])


@pytest.mark.parametrize("diffusion", PROCESSES, ids=["ddpm", "flow"])
def test_fractional_context_guidance_sees_the_noised_earlier_frames(diffusion) -> None:  # noqa: ANN001
    """Fractional context guidance: one step rebuilt by hand (the unguided prediction is the chunk after the
    prompt noised to the fraction, labelled with its time); the cached and the recomputed paths agree until
    the first eviction, also with a sink and caption guidance; it differs from plain context guidance, 0 is
    plain context guidance bit for bit, and bad values or a missing context guidance are refused."""
    model = tiny_model(text=True)
    prompt, text, s, g, h = _prompt(3), torch.randn(B, 4, 16), 2.0, 3.0, 0.5
    if isinstance(diffusion, RectifiedFlow):  # (the by-hand step is the flow's: one step from t = 1 to 0)
        out = _gen(model, diffusion, prompt, 2, chunk=2, window=4, steps=1, text=text, cfg_scale=g, context_scale=s,
                   context_guidance_noise=h)
        _assert_roundoff(out[:, 3:], _one_step_by_hand(model, diffusion, prompt, text, cfg_scale=g, context_scale=s,
                                                       guidance_noise=h))
    P, chunk, window, n = 2, 2, 8, 6
    assert frames_before_eviction(P, n, chunk=chunk, window=window) == n
    kw = dict(chunk=chunk, window=window, steps=3, text=text, cfg_scale=g, context_scale=s, sink=1)
    cached = _gen(model, diffusion, prompt[:, :P], n, use_cache=True, context_guidance_noise=h, **kw)
    _assert_roundoff(cached, _gen(model, diffusion, prompt[:, :P], n, use_cache=False, context_guidance_noise=h, **kw))
    plain = _gen(model, diffusion, prompt[:, :P], n, **kw)
    assert torch.equal(plain, _gen(model, diffusion, prompt[:, :P], n, context_guidance_noise=0.0, **kw))
    assert (cached[:, P:] - plain[:, P:]).abs().max() > 1e-3 * plain.abs().max()
    for bad in (1.0, -0.1, float("nan")):
        _one_line_error("context_guidance_noise must be a number in", lambda bad=bad: _gen(
            model, diffusion, prompt, 2, context_guidance_noise=bad, **kw))
        _one_line_error("context_guidance_noise must be a number in",
                        lambda bad=bad: SamplingSpec(context_scale=2.0, context_guidance_noise=bad))
    _one_line_error(r"context_guidance_noise needs context guidance \(context_scale != 1\)",
                    lambda: _gen(model, diffusion, prompt, 2, **{**kw, "context_scale": 1.0, "context_guidance_noise": h}))
    _one_line_error("context_guidance_noise needs context guidance", lambda: SamplingSpec(context_guidance_noise=h))


def test_eviction_makes_the_two_differ_and_bounds_the_cache() -> None:
    model = tiny_model(text=False)
    diffusion = RectifiedFlow()
    P, chunk, window, n = 1, 2, 3, 8
    kept = frames_before_eviction(P, n, chunk=chunk, window=window)
    assert kept == 4  # chunks starting at frames 1 and 3 see everything; the one at 5 does not
    a = _gen(model, diffusion, _prompt(P), n, chunk=chunk, window=window, steps=3)
    b = _gen(model, diffusion, _prompt(P), n, chunk=chunk, window=window, steps=3, use_cache=False)
    _assert_roundoff(a[:, : P + kept], b[:, : P + kept])
    assert (a[:, P + kept :] - b[:, P + kept :]).abs().max() > 1e-4

    cache = TemporalKVCache(window)
    lengths = []
    with torch.no_grad():
        for frames in (2, 2, 3, 1):
            model(torch.randn(1, frames, C, H, W), torch.zeros(1, frames), cache=cache, write_cache=True)
            lengths.append((cache.length, cache.get(0)[0].shape[1], cache.next_position, cache.evicted))
    assert lengths == [(2, 2, 2, 0), (3, 3, 4, 1), (3, 3, 7, 4), (3, 3, 8, 5)]


def test_cache_keeps_the_newest_frames() -> None:
    cache = TemporalKVCache(window=3)
    for start in (0, 2, 4):
        k = torch.arange(start, start + 2).float().view(1, 2, 1, 1)
        cache.extend(0, k, k + 100)
        cache.advance(2)
    k, v = cache.get(0)
    assert k.flatten().tolist() == [3.0, 4.0, 5.0] and v.flatten().tolist() == [103.0, 104.0, 105.0]
    with pytest.raises(ValueError, match="batch size or image size changed"):
        cache.extend(0, torch.zeros(2, 1, 1, 1), torch.zeros(2, 1, 1, 1))
    with pytest.raises(ValueError, match="window"):
        TemporalKVCache(0)


def test_prompt_longer_than_window() -> None:
    model = tiny_model(text=False)
    out = _gen(model, RectifiedFlow(), _prompt(6), 4, chunk=2, window=3, steps=2)
    assert out.shape == (B, 10, C, H, W) and torch.isfinite(out).all()


def test_seeded_sampling_is_deterministic() -> None:
    model = tiny_model()
    prompt = _prompt(2)
    kw = dict(chunk=2, window=6, steps=3)
    a = _gen(model, GaussianDiffusion(), prompt, 5, **kw)
    b = _gen(model, GaussianDiffusion(), prompt, 5, **kw)
    assert torch.equal(a, b)
    c = generate(model, GaussianDiffusion(), prompt, 5, generator=torch.Generator().manual_seed(12), **kw)
    assert not torch.equal(a[:, 2:], c[:, 2:])
    # stochastic DDIM (eta = 1) is seeded too
    d1 = _gen(model, GaussianDiffusion(eta=1.0), prompt, 5, **kw)
    d2 = _gen(model, GaussianDiffusion(eta=1.0), prompt, 5, **kw)
    assert torch.equal(d1, d2) and not torch.equal(d1, a)


def test_model_calls_and_flops_match_what_generate_runs() -> None:
    """The call plan used for FLOP accounting is exactly what the sampler runs, and its FLOPs are
    exactly what a FLOP counter measures (reference attention kernel, which the counter sees)."""
    model = tiny_model(text=True)
    prompt, text = _prompt(2), torch.randn(B, 5, 16)
    for use_cache in (True, False):
        seen: list[tuple[int, int]] = []

        def hook(module, args, kwargs, seen=seen):  # noqa: ANN001, ANN202
            cache = kwargs.get("cache")
            seen.append((args[0].shape[1], 0 if cache is None else cache.length))

        for context_scale, noise in ((1.0, 0.0), (2.0, 0.0), (2.0, 0.4)):
            seen.clear()
            handle = model.register_forward_pre_hook(hook, with_kwargs=True)
            kw = dict(chunk=3, window=4, steps=3, use_cache=use_cache)  # chunks of 3, 3, 2 frames
            with use_backend(Backend.MATH), FlopCounterMode(display=False) as counter:
                _gen(model, RectifiedFlow(), prompt, 8, text=text, cfg_scale=2.0, context_scale=context_scale,
                     context_guidance_noise=noise, **kw)
            handle.remove()
            flags = dict(context_guided=context_scale != 1.0, fractional=noise > 0)
            plan = model_calls(2, 8, chunk=3, window=4, steps=3, use_cache=use_cache, **flags)
            assert seen == [(c.new_frames, c.cached_frames) for c in plan]
            # (a 1-frame chunk alone would be off: the counter does not see einsum's singleton products)
            assert counter.get_total_flops() == generation_flops(model, prompt, 8, guided=True, **flags, **kw)
    assert model_calls(1, 4, chunk=2, window=8, steps=2, use_cache=True) == [
        ModelCall(1, 0), ModelCall(2, 1), ModelCall(2, 1), ModelCall(2, 1), ModelCall(2, 3), ModelCall(2, 3),
    ]


def test_generate_refuses_bad_arguments() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="prompt must be"):
        generate(model, RectifiedFlow(), torch.randn(2, 4, 8, 8), 3, chunk=1, window=2, steps=1)
    with pytest.raises(ValueError, match="chunk, window, steps >= 1"):
        generate(model, RectifiedFlow(), _prompt(1), 3, chunk=0, window=2, steps=1)
    with pytest.raises(ValueError, match="needs text"):
        generate(model, RectifiedFlow(), _prompt(1), 3, chunk=1, window=2, steps=1, cfg_scale=2.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="context_scale must be"):
            generate(model, RectifiedFlow(), _prompt(1), 3, chunk=1, window=2, steps=1, context_scale=bad)


def test_kvcache_benchmark_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--flavor", "tiny", "--latent-size", "8", "--frames", "6", "--chunk", "2", "--window", "4", "--steps", "2",
            "--repeats", "1", "--growth-frames", "8,16", "--channels", "16"]  # Wan 2.1 VAE latents: 16 channels
    assert bench.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["latent"] == [16, 8, 8]
    growth = result["growth"]
    assert growth["frames"] == [8, 16] and len(growth["s_per_frame"]) == 2 and growth["ratio_longest_to_shortest"] > 0
    assert result["frames_compared"] == 4
    assert result["max_abs_diff"] <= 1e-4
    assert result["flop_ratio"] > 1.0
    assert result["cache_s"] > 0 and result["no_cache_s"] > 0
    assert {"speedup", "flop_ratio", "max_abs_diff", "cache_s", "no_cache_s"} <= result.keys()


def test_benchmark_command_and_help() -> None:
    command = [sys.executable, "-m", "vidgpt.benchmarks", "kvcache"]  # vidgpt-bench kvcache
    out = subprocess.run([*command, "--help"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: vidgpt-bench kvcache")
    for flag in ("--flavor", "--frames", "--prompt-frames", "--chunk", "--window", "--steps", "--seed"):
        assert flag in out
    bad = subprocess.run([*command, "--chunk", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--chunk must be >= 1" in bad.stderr


def test_bidirectional_baseline_samples_without_cache_and_refuses_one() -> None:
    causal = tiny_model()
    bidir = VidGPT(dataclasses.replace(causal.cfg, temporal="bidirectional"), init_weights=False)
    bidir.load_state_dict(causal.state_dict())
    bidir.eval()
    with pytest.raises(ValueError, match="use_cache=True needs a causal model.*use_cache=False"):
        generate(bidir, RectifiedFlow(), _prompt(2), 4, chunk=2, window=4, steps=2)
    prompt = _prompt(2)
    out = _gen(bidir, RectifiedFlow(), prompt, 5, chunk=2, window=4, steps=3, use_cache=False)
    assert out.shape == (B, 7, C, H, W) and torch.equal(out[:, :2], prompt)
    # recomputing the window with bidirectional attention is not the causal model's sampling
    ref = _gen(causal, RectifiedFlow(), prompt, 5, chunk=2, window=4, steps=3, use_cache=False)
    assert (out[:, 2:] - ref[:, 2:]).abs().max() > 1e-3


def test_autocast_sampling_keeps_the_sampler_state_in_fp32() -> None:
    """bf16 autocast (as on GPUs; CPU autocast runs bf16 too): the output is float32, close to the fp32
    run, and not the fp32 run itself (the network really ran in bf16)."""
    model = tiny_model(text=False).eval()
    prompt = torch.randn(2, 2, 4, 8, 8)
    kw = dict(chunk=2, window=4, steps=4, use_cache=True)
    ref = generate(model, RectifiedFlow(), prompt, 4, generator=torch.Generator().manual_seed(0), **kw)
    low = generate(model, RectifiedFlow(), prompt.bfloat16(), 4, generator=torch.Generator().manual_seed(0),
                   autocast=torch.bfloat16, **kw)
    assert ref.dtype == low.dtype == torch.float32
    assert 0 < (low - ref).abs().max() < 0.1 * ref.abs().max()
    assert sampling_autocast("auto", "cpu") is None and sampling_autocast("fp32", "cpu") is None
    assert sampling_autocast("bf16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be"):
        sampling_autocast("fp16", "cpu")


def test_cache_buffers_are_written_in_place_and_keep_their_shape() -> None:
    """The per-block buffers are allocated once; denoising calls write their frames after the held ones
    without keeping them, and once the window is full every call attends to the same shapes."""
    cache = TemporalKVCache(window=4)
    frames = lambda start, n: torch.arange(start, start + n).float().view(1, n, 1, 1)  # noqa: E731
    seen = []
    for start in range(0, 12, 2):
        for _step in range(3):  # denoising calls: attend to held + new, keep nothing
            k, v = cache.attend(0, frames(100 + start, 2), frames(200 + start, 2))
            seen.append(k.shape[1])
            assert k[0, -2:].flatten().tolist() == [100.0 + start, 101.0 + start]
        ptr = cache._keys[0].data_ptr()
        cache.extend(0, frames(start, 2), frames(start + 50, 2))  # the clean pass
        cache.advance(2)
        assert cache._keys[0].data_ptr() == ptr  # no reallocation
        held_k, held_v = cache.get(0)
        expect = list(range(max(0, start + 2 - 4), start + 2))
        assert held_k.flatten().tolist() == [float(x) for x in expect]
        assert held_v.flatten().tolist() == [float(x + 50) for x in expect]
    assert seen == [2] * 3 + [4] * 3 + [6] * 12  # constant once the window is full
    with pytest.raises(ValueError, match="the last call wrote"):
        cache.advance(3)


# ----------------------------------------------------------------------------- the attention sink


def test_sink_cache_holds_the_first_frames_then_the_newest_at_contiguous_positions() -> None:
    """Through several evictions the cache holds the first `sink` frames then the newest window - sink
    (values: the frame indices), and its keys are each frame's keys rotated at the position it is presented
    at: the sink right before the oldest recent frame, the recent frames at their own positions."""
    window, sink, E, theta = 5, 2, 8, 10000.0
    raw = torch.randn(3, 20, 2, E, generator=torch.Generator().manual_seed(0))  # (N, frames, H, E), unrotated
    cache = TemporalKVCache(window, sink=sink, rope_theta=theta)
    written = 0
    for size in (3, 2, 2, 3, 1, 4, 5):  # evicts from the third chunk on
        cos, sin = rope_angles(torch.arange(written, written + size), E, theta)
        values = torch.arange(written, written + size).float().view(1, size, 1, 1).expand(3, size, 2, E)
        cache.extend(0, apply_rope(raw[:, written : written + size], cos, sin), values)
        cache.advance(size)
        written += size
        if written <= window:
            held, positions = list(range(written)), list(range(written))
        else:
            held = list(range(sink)) + list(range(written - (window - sink), written))
            positions = list(range(written - window, written))  # contiguous, ending right before the next chunk
        k, v = cache.get(0)
        assert v[0, :, 0, 0].tolist() == [float(f) for f in held], written
        assert cache.sink_position() == positions[0] and cache.length == len(held)
        expect = apply_rope(raw[:, held], *rope_angles(torch.tensor(positions), E, theta))
        torch.testing.assert_close(k, expect, atol=1e-5, rtol=1e-5)
    assert cache.evicted == written - window > 2 * window  # several evictions, the sink moved far from 0


def _one_block_model(scope: str = "position") -> VidGPT:
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY_NO_TEXT, depth=1, temporal_scope=scope)
    return randomize_weights_(VidGPT(cfg), seed=0).eval()


@pytest.mark.parametrize("scope", ["position", "frame"])
@pytest.mark.parametrize("P,sink,chunk,window,n", [(3, 2, 2, 4, 10), (2, 1, 3, 5, 11), (4, 3, 1, 4, 8)])
def test_sink_cache_equals_no_cache_through_evictions_with_one_block(P: int, sink: int, chunk: int, window: int,
                                                                     n: int, scope: str) -> None:
    """With one block a frame's cached keys/values depend on that frame and its position only, so the
    cache equals recomputing the context (the first `sink` frames + the newest window - sink, contiguous
    positions) even after evictions, exactly when it holds those frames at those positions (frame scope:
    the sink's re-rotation turns the temporal RoPE dims only, not the spatial ones)."""
    model = _one_block_model(scope)
    prompt = _prompt(P)
    assert frames_before_eviction(P, n, chunk=chunk, window=window) < n  # it does evict
    common = dict(chunk=chunk, window=window, steps=3)
    cached = _gen(model, RectifiedFlow(), prompt, n, use_cache=True, sink=sink, **common)
    plain = _gen(model, RectifiedFlow(), prompt, n, use_cache=False, sink=sink, **common)
    _assert_roundoff(cached, plain)
    without = _gen(model, RectifiedFlow(), prompt, n, use_cache=True, **common)  # the sink does something
    kept = frames_before_eviction(P, n, chunk=chunk, window=window)
    assert torch.equal(without[:, : P + kept], cached[:, : P + kept])
    assert (without[:, P + kept :] - cached[:, P + kept :]).abs().max() > 1e-4


@pytest.mark.parametrize("diffusion", PROCESSES, ids=["ddpm", "flow"])
@pytest.mark.parametrize("P,sink,chunk,window,n", [(3, 2, 4, 12, 9), (2, 1, 3, 11, 9), (5, 4, 5, 10, 5)])
def test_sink_cache_equals_no_cache_before_eviction(diffusion, P: int, sink: int, chunk: int, window: int,  # noqa: ANN001
                                                    n: int) -> None:
    model = tiny_model(text=True)
    assert frames_before_eviction(P, n, chunk=chunk, window=window) == n
    prompt, text = _prompt(P), torch.randn(B, 5, 16)
    kw = dict(chunk=chunk, window=window, steps=4, text=text, cfg_scale=2.0, sink=sink)
    cached = _gen(model, diffusion, prompt, n, use_cache=True, **kw)
    _assert_roundoff(cached, _gen(model, diffusion, prompt, n, use_cache=False, **kw))
    assert torch.equal(cached, _gen(model, diffusion, prompt, n, use_cache=True, **{**kw, "sink": 0}))


def test_sink_with_two_blocks_differs_from_no_cache_only_after_eviction() -> None:
    model = tiny_model(text=False)
    P, sink, chunk, window, n = 2, 1, 2, 3, 8
    kept = frames_before_eviction(P, n, chunk=chunk, window=window)
    a = _gen(model, RectifiedFlow(), _prompt(P), n, chunk=chunk, window=window, steps=3, sink=sink)
    b = _gen(model, RectifiedFlow(), _prompt(P), n, chunk=chunk, window=window, steps=3, sink=sink, use_cache=False)
    _assert_roundoff(a[:, : P + kept], b[:, : P + kept])
    assert (a[:, P + kept :] - b[:, P + kept :]).abs().max() > 1e-4  # deeper blocks' cached keys, by design


def test_sink_zero_is_the_default_bit_for_bit() -> None:
    model = tiny_model(text=True)
    prompt, text = _prompt(2), torch.randn(B, 5, 16)
    kw = dict(chunk=2, window=3, steps=2, text=text, cfg_scale=2.0)  # evicts from the second chunk on
    for use_cache in (True, False):
        default = _gen(model, RectifiedFlow(), prompt, 8, use_cache=use_cache, **kw)
        assert torch.equal(default, _gen(model, RectifiedFlow(), prompt, 8, use_cache=use_cache, sink=0, **kw))
        sunk = _gen(model, RectifiedFlow(), prompt, 8, use_cache=use_cache, sink=1, **kw)
        assert torch.equal(default[:, :4], sunk[:, :4]) and not torch.equal(default, sunk)
    # generate_as passes the spec's sink
    spec = SamplingSpec(prompt_frames=2, chunk=2, window=3, steps=2, sink=1)
    out = generate_as(spec, model, RectifiedFlow(), prompt, 8, generator=torch.Generator().manual_seed(11))
    assert torch.equal(out, _gen(model, RectifiedFlow(), prompt, 8, chunk=2, window=3, steps=2, sink=1))


def _one_line_error(match: str, call) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_sink_refusals_name_both_numbers() -> None:
    model = tiny_model(text=False)
    gen = lambda **kw: generate(model, RectifiedFlow(), _prompt(3), 2, chunk=1, steps=1, **kw)  # noqa: E731
    _one_line_error(r"sink \(4\) must be >= 0 and < window \(4\)", lambda: gen(window=4, sink=4))
    _one_line_error(r"sink \(4\) must be <= the prompt frames \(3\)", lambda: gen(window=6, sink=4))
    _one_line_error(r"sink \(-1\)", lambda: gen(window=6, sink=-1))
    _one_line_error(r"sink \(3\) must be >= 0 and < the window \(3\)", lambda: TemporalKVCache(3, sink=3))
    _one_line_error(r"sink \(3\) must be <= prompt_frames \(2\)", lambda: SamplingSpec(prompt_frames=2, sink=3))
    _one_line_error(r"sink \(3\) must be < window \(3\)", lambda: SamplingSpec(prompt_frames=3, window=3, sink=3))
    _one_line_error(r"sink must be >= 0 \(got -1\)", lambda: SamplingSpec(sink=-1))
    # a derived window: clip 8 -> chunk 4, window 4
    _one_line_error(r"sink \(4\) must be < window \(4\)", lambda: SamplingSpec(prompt_frames=4, sink=4).for_clip_len(8))
    assert SamplingSpec(prompt_frames=3, sink=3).for_clip_len(8).window == 4
    with torch.no_grad():  # the cache re-rotates its sink with the model's RoPE base only
        _one_line_error("rope_theta 500.0 over 16 dims, the model's are 10000.0 over 16", lambda: model(
            _prompt(1), torch.zeros(B, 1), cache=TemporalKVCache(4, sink=1, rope_theta=500.0), write_cache=True))


@pytest.mark.parametrize("diffusion", PROCESSES, ids=["ddpm", "flow"])
def test_context_noise_with_cache_equals_without_and_changes_only_later_chunks(diffusion) -> None:  # noqa: ANN001
    """Generated frames enter the context noised (labelled with their time): the cached and the recomputed
    context see the same noised frames (same generator stream) until the first eviction; the first chunk,
    which sees only the clean prompt, is the same as without context noise, later ones differ; 0 is the
    default bit for bit, and a value outside [0, 1) is refused."""
    model = tiny_model(text=False)
    P, chunk, window, n = 2, 2, 8, 6
    assert frames_before_eviction(P, n, chunk=chunk, window=window) == n
    prompt = _prompt(P)
    kw = dict(chunk=chunk, window=window, steps=3)
    cached = _gen(model, diffusion, prompt, n, use_cache=True, context_noise=0.3, **kw)
    _assert_roundoff(cached, _gen(model, diffusion, prompt, n, use_cache=False, context_noise=0.3, **kw))
    clean = _gen(model, diffusion, prompt, n, use_cache=True, **kw)
    assert torch.equal(clean, _gen(model, diffusion, prompt, n, use_cache=True, context_noise=0.0, **kw))
    assert torch.equal(cached[:, : P + chunk], clean[:, : P + chunk])
    assert (cached[:, P + chunk :] - clean[:, P + chunk :]).abs().max() > 1e-4
    for bad in (1.0, -0.1, float("nan")):
        _one_line_error("context_noise must be a number in", lambda bad=bad: _gen(model, diffusion, prompt, n,
                                                                                   context_noise=bad, **kw))
        _one_line_error("context_noise must be a number in", lambda bad=bad: SamplingSpec(context_noise=bad))
