from __future__ import annotations

import json

import pytest
import torch

import vidgpt.attention as attn
from vidgpt.attention import (
    Backend,
    attention,
    causal_mask,
    flash_available,
    reference_attention,
    use_backend,
)
from vidgpt.benchmarks.attention import main


def _qkv(b: int, lq: int, lk: int, h: int = 2, d: int = 8, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    g = torch.Generator().manual_seed(lq * 100 + lk)
    q = torch.randn(b, lq, h, d, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(b, lk, h, d, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(b, lk, h, d, generator=g).to(device=device, dtype=dtype)
    return q, k, v


def _naive(q, k, v, allowed):  # noqa: ANN001, ANN202
    """Loop-by-loop softmax over allowed keys: an independent oracle for the reference."""
    B, Lq, H, D = q.shape
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            for i in range(Lq):
                keys = [j for j in range(k.shape[1]) if allowed(b, i, j)]
                s = torch.stack([(q[b, i, h] * k[b, j, h]).sum() / D**0.5 for j in keys])
                w = s.softmax(0)
                out[b, i, h] = sum(w[n] * v[b, j, h] for n, j in enumerate(keys))
    return out


def test_causal_mask_is_bottom_right_aligned() -> None:
    m = causal_mask(2, 5)
    # the last query sees every key, the first all but the last one
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())
    with pytest.raises(ValueError, match="q_len <= k_len"):
        causal_mask(5, 2)


@pytest.mark.parametrize("lq,lk", [(5, 5), (3, 7), (1, 6)])
def test_reference_matches_naive_oracle(lq: int, lk: int) -> None:
    q, k, v = _qkv(2, lq, lk)
    key_mask = torch.ones(2, lk, dtype=torch.bool)
    key_mask[1, 1] = False  # key 0 stays visible to every query
    got = reference_attention(q, k, v, causal=True, key_mask=key_mask)
    want = _naive(q, k, v, lambda b, i, j: j <= i + lk - lq and bool(key_mask[b, j]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lq,lk", [(6, 6), (3, 9), (1, 4), (8, 8)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_matches_reference(lq: int, lk: int, causal: bool, masked: bool) -> None:
    q, k, v = _qkv(3, lq, lk)
    key_mask = None
    if masked:
        key_mask = torch.rand(3, lk, generator=torch.Generator().manual_seed(7)) > 0.3
        key_mask[:, 0] = True  # every row keeps a visible key
    want = reference_attention(q, k, v, causal=causal, key_mask=key_mask)
    with use_backend(Backend.SDPA):
        got = attention(q, k, v, causal=causal, key_mask=key_mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, causal=causal, key_mask=key_mask), want, atol=1e-5, rtol=1e-5)


def test_cached_queries_equal_the_tail_of_full_causal_attention() -> None:
    """q_len < k_len with bottom-right alignment is exactly the last rows of the square causal case."""
    q, k, v = _qkv(2, 9, 9)
    full = attention(q, k, v, causal=True)
    tail = attention(q[:, 6:], k, v, causal=True)
    torch.testing.assert_close(tail, full[:, 6:], atol=1e-6, rtol=1e-6)
    # top-left alignment (SDPA's is_causal with q_len < k_len) would differ: guard against regressing to it
    top_left = torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in (q[:, 6:], k, v)), is_causal=True
    ).transpose(1, 2)
    assert not torch.allclose(top_left, full[:, 6:], atol=1e-3)


def test_bad_shapes_are_refused() -> None:
    q, k, v = _qkv(1, 4, 3)
    with pytest.raises(ValueError, match="q_len <= k_len"):
        attention(q, k, v, causal=True)
    with pytest.raises(ValueError, match="attention expects"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match="key_mask"):
        attention(q, k, v, key_mask=torch.ones(1, 5, dtype=torch.bool))


def test_flash_backend_needs_the_package() -> None:
    if flash_available():
        pytest.skip("flash-attn is installed here")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="flash-attn is not installed"):
            with use_backend(Backend.FLASH):
                pass


@pytest.mark.gpu
@pytest.mark.skipif(not flash_available(), reason="needs CUDA and flash-attn")
@pytest.mark.parametrize("lq,lk", [(33, 33), (8, 33), (1, 26)])
def test_flash_matches_sdpa_on_gpu(lq: int, lk: int) -> None:
    q, k, v = _qkv(4, lq, lk, h=4, d=64, dtype=torch.bfloat16, device="cuda")
    with use_backend(Backend.FLASH):
        got = attention(q, k, v, causal=True)
    want = reference_attention(q.float(), k.float(), v.float(), causal=True)
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("backend", [Backend.SDPA, Backend.MATH])
@pytest.mark.parametrize("masked", [False, True])
def test_batches_over_the_kernel_cap_are_split_and_agree(monkeypatch: pytest.MonkeyPatch, backend: Backend,
                                                         masked: bool) -> None:
    """The CUDA grid caps a launch's batch at 65535; with the cap lowered to 3, a batch of 8 runs as
    3 + 3 + 2 kernel calls and gives what one call gives."""
    q, k, v = _qkv(8, 4, 6)
    key_mask = (torch.arange(6)[None, :] < torch.tensor([6, 5, 4, 3, 6, 2, 6, 1])[:, None]) if masked else None
    with use_backend(backend):
        whole = attention(q, k, v, causal=True, key_mask=key_mask)
        seen: list[int] = []
        kernel = attn._kernel

        def spy(b, q_, *rest):  # noqa: ANN001, ANN202
            seen.append(q_.shape[0])
            return kernel(b, q_, *rest)

        monkeypatch.setattr(attn, "MAX_KERNEL_BATCH", 3)
        monkeypatch.setattr(attn, "_kernel", spy)
        split = attention(q, k, v, causal=True, key_mask=key_mask)
    assert seen == [3, 3, 2]
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-6)


def test_backend_choice_is_logged_once_and_described(caplog: pytest.LogCaptureFixture) -> None:
    attn._logged.clear()
    q, k, v = _qkv(2, 3, 3)
    with caplog.at_level("INFO", logger="vidgpt.attention"):
        for _ in range(3):
            attention(q, k, v, causal=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "vidgpt.attention"]
    assert lines == ["attention: sdpa kernel for cpu float32"]
    assert attn.describe(torch.device("cpu")).startswith("PyTorch SDPA (flash-attn ")
    with use_backend(Backend.MATH):
        assert attn.describe(torch.device("cpu")) == "math (forced)"


def test_attention_benchmark_prints_one_json_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--flavor", "tiny", "--latent-size", "4", "--frames", "3,5", "--repeats", "1", "--device", "cpu",
                 "--dtype", "float32"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["frames"] for r in result["by_frames"]] == [3, 5]
    for row in result["by_frames"]:
        assert {"default", "sdpa", "bmm", "sdpa_math"} <= row["seconds"].keys()
        assert row["fastest"] in row["seconds"] and row["speedup_vs_default"] > 0
    with pytest.raises(SystemExit):
        main(["--frames", "0"])
