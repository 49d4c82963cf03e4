"""experiments.context_response: the blur it applies and the contexts it builds."""

from __future__ import annotations

import torch

from experiments.context_response import CONTEXTS, contexts, gaussian_blur


def test_blur_keeps_a_constant_image_and_the_mass_of_a_centred_dot() -> None:
    """A constant frame stays constant (the kernel sums to 1, edges reflected); a dot far from the edges keeps
    its total and spreads symmetrically; sigma 0 returns the input."""
    flat = torch.full((2, 3, 3, 16, 16), 0.25)
    assert torch.allclose(gaussian_blur(flat, 0.7), flat, atol=1e-6)
    dot = torch.zeros(1, 1, 15, 15)
    dot[0, 0, 7, 7] = 1.0
    out = gaussian_blur(dot, 1.0)
    assert abs(float(out.sum()) - 1.0) < 1e-5
    assert float(out[0, 0, 7, 7]) < 0.5 and float(out[0, 0, 7, 8]) > 0.05
    for mirrored in (out.flip(-1), out.flip(-2), out.transpose(-1, -2)):
        assert torch.allclose(out, mirrored)
    assert gaussian_blur(dot, 0.0) is dot


def test_contexts_take_the_last_frame_from_the_flawed_version() -> None:
    """true/own/blurred carry distinct constants per frame: each context holds the frames its name says."""
    def frames(a: float, b: float) -> torch.Tensor:
        return torch.stack([torch.full((1, 1, 2, 2), float(a)), torch.full((1, 1, 2, 2), float(b))], dim=1)

    made = contexts(frames(0, 1), frames(10, 11), frames(20, 21))
    assert tuple(made) == CONTEXTS
    firsts_lasts = {name: (float(x[0, 0].mean()), float(x[0, 1].mean())) for name, x in made.items()}
    assert firsts_lasts == {"true": (0, 1), "own_last": (0, 11), "own_both": (10, 11), "blur_last": (0, 21),
                            "blur_both": (20, 21)}
