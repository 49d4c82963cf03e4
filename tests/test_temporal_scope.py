"""temporal_scope = "frame": temporal attention over every token of the frames a frame may see, checked against
a brute-force reference, for causality, against the kv-cache and against teacher forcing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vidgpt.attention import reference_attention
from vidgpt.config import ConfigError, load_config
from vidgpt.kv_cache import rope_angles
from vidgpt.model import VidGPT, model_stats, rotate, spatial_rope_angles, teacher_forcing_mask, whole_frame_attention
from vidgpt.testing import randomize_weights_

from conftest import TINY, TINY_NO_TEXT, assert_cache_equals_no_cache, assert_teacher_forced_equals_cached, counted_flops

FRAME = dataclasses.replace(TINY_NO_TEXT, temporal_scope="frame")
B, C, H, W = 2, 4, 8, 8


def _model(cfg=FRAME, dtype: torch.dtype = torch.float32) -> VidGPT:  # noqa: ANN001
    torch.manual_seed(0)
    return randomize_weights_(VidGPT(cfg), seed=0).to(dtype).eval()


def _brute_force(q, k, v, batch: int, frame_sees) -> torch.Tensor:  # noqa: ANN001
    """Every (row, query frame, position) by hand: softmax over the key tokens of the frames it sees."""
    S = q.shape[0] // batch
    out = torch.zeros_like(q)
    for b in range(batch):
        keys = k[b * S:(b + 1) * S]  # (S, Tk, H, E)
        vals = v[b * S:(b + 1) * S]
        for i in range(q.shape[1]):
            seen = [j for j in range(k.shape[1]) if frame_sees(i, j)]
            kk = keys[:, seen].transpose(0, 1).reshape(1, -1, *k.shape[2:])  # (1, |seen|*S, H, E)
            vv = vals[:, seen].transpose(0, 1).reshape(1, -1, *v.shape[2:])
            for s in range(S):
                out[b * S + s, i] = reference_attention(q[b * S + s, i][None, None], kk, vv)[0, 0]
    return out


@pytest.mark.parametrize("T,Tk,causal", [(3, 3, True), (2, 5, True), (1, 4, True), (3, 3, False)])
def test_whole_frame_attention_matches_a_brute_force_reference(T: int, Tk: int, causal: bool) -> None:
    """Causal: query frame i (after Tk - T cached frames) sees key frames j <= i + Tk - T, at every position."""
    g = torch.Generator().manual_seed(T * 10 + Tk)
    S = 3
    q = torch.randn(B * S, T, 2, 4, generator=g)
    k, v = (torch.randn(B * S, Tk, 2, 4, generator=g) for _ in range(2))
    got = whole_frame_attention(q, k, v, B, causal, None)
    expected = _brute_force(q, k, v, B, lambda i, j: (j <= i + Tk - T) if causal else True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_whole_frame_attention_follows_a_frame_mask() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(B * 3, 6, 2, 4, generator=g) for _ in range(3))
    mask = teacher_forcing_mask(3)
    got = whole_frame_attention(q, k, v, B, True, mask)
    torch.testing.assert_close(got, _brute_force(q, k, v, B, lambda i, j: bool(mask[i, j])), atol=1e-5, rtol=1e-5)


def test_frame_scope_is_causal_and_reads_other_positions() -> None:
    """Output frames <= k ignore frames > k; and unlike the per-position scope, a one-block model without
    spatial mixing in the later frame still sees what moved elsewhere in an earlier frame."""
    model = _model()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, 5, C, H, W, generator=g)
    t = torch.rand(B, 5, generator=g) * 1000
    with torch.no_grad():
        base = model(x, t)
        for k in range(4):
            x2 = x.clone()
            x2[:, k + 1:] = torch.randn_like(x2[:, k + 1:]) * 3
            out = model(x2, t)
            torch.testing.assert_close(out[:, :k + 1], base[:, :k + 1], atol=1e-6, rtol=0)
            assert (out[:, k + 1:] - base[:, k + 1:]).abs().max() > 1e-3
    # the two scopes compute different things from the same weights
    position = VidGPT(TINY_NO_TEXT)
    position.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (position.eval()(x, t) - base).abs().max() > 1e-3


@pytest.mark.parametrize("chunk,window,n", [(1, 8, 6), (2, 8, 6), (3, 9, 6)])
def test_frame_scope_cache_equals_no_cache_before_eviction(chunk: int, window: int, n: int) -> None:
    assert_cache_equals_no_cache(_model(dtype=torch.float64), (B, C, H, W), chunk, window, n)


def test_frame_scope_teacher_forced_call_equals_cached_frame_by_frame_calls() -> None:
    assert_teacher_forced_equals_cached(_model(), (B, C, H, W), 4)


@pytest.mark.parametrize("cached", [0, 3])
def test_frame_scope_flops_match_the_flop_counter(cached: int) -> None:
    model = _model(dataclasses.replace(TINY, temporal_scope="frame"))
    flops = counted_flops(model, (B, C, H, W), 4, cached)
    stats = model_stats(model.cfg, 4, H, W, batch=B, cached_frames=cached)
    assert flops == stats.flops
    assert stats.attention_flops > model_stats(TINY, 4, H, W, batch=B, cached_frames=cached).attention_flops


def test_the_config_takes_the_scope_and_names_a_bad_one(tmp_path) -> None:  # noqa: ANN001
    assert load_config(None, ["--model.temporal_scope=frame"]).model.temporal_scope == "frame"
    with pytest.raises(ConfigError, match="temporal_scope"):
        load_config(None, ["--model.temporal_scope=everywhere"])


def test_3d_rope_scores_depend_on_offsets_in_time_and_space_only() -> None:
    """Frame scope splits a head into temporal and spatial RoPE dims; a query/key score is unchanged when both
    move by the same frames, rows or columns, and changes when only one of them moves."""
    assert FRAME.rope_dims == (8, 8) and dataclasses.replace(FRAME, hidden=64, heads=2).rope_dims == (12, 20)
    assert TINY.rope_dims == (TINY.head_dim, 0)
    E, hp, wp, T = FRAME.head_dim, 4, 5, 6
    et, es = FRAME.rope_dims
    g = torch.Generator().manual_seed(7)
    qv, kv = torch.randn(E, generator=g), torch.randn(E, generator=g)
    x = torch.zeros(1 * hp * wp, T, 1, E)  # (B*S, T, H, E): every token and frame holds the same vector
    rope = (*rope_angles(torch.arange(T), et, FRAME.rope_theta), *spatial_rope_angles(hp, wp, es, FRAME.rope_theta))
    q, k = rotate(x + qv, rope, 1), rotate(x + kv, rope, 1)

    def score(q_at: tuple[int, int, int], k_at: tuple[int, int, int]) -> float:  # (frame, row, col)
        (fq, rq, cq), (fk, rk, ck) = q_at, k_at
        return float(q[rq * wp + cq, fq, 0] @ k[rk * wp + ck, fk, 0])

    base = score((3, 1, 2), (1, 2, 0))
    assert abs(score((5, 2, 4), (3, 3, 2)) - base) < 1e-4  # both moved by 2 frames, 1 row, 2 columns
    for moved in ((3, 2, 2), (3, 1, 3), (4, 1, 2)):  # the query alone moved a row, a column or a frame
        assert abs(score(moved, (1, 2, 0)) - base) > 1e-3
