"""vidgpt-sample from the user's own files: continue a video, animate an image, captions, bad inputs."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from data_pipeline.codecs import build_codec
from data_pipeline.encode import main as encode
from data_pipeline.synthetic import make_synthetic_videos
from data_pipeline.text import save_tiny_text_encoder
from data_pipeline.video import DecodeOptions, decode_clips
from vidgpt.export import CONFIG, WEIGHTS, sampling_info
from vidgpt.model import FLAVORS, VidGPT
from vidgpt.sample import main as sample
from vidgpt.sample import with_chunk_and_window
from vidgpt.sampling import SamplingSpec
from vidgpt.testing import randomize_weights_

from test_codecs import save_tiny_vae

SIZE = 32
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real mp4 (24 frames at 8 fps), a png of another size, the tiny T5, an encoded dataset, and an
    export of a tiny random model whose config.json records the dataset's codec, size, fps and T5."""
    root = tmp_path_factory.mktemp("sample_inputs")
    make_synthetic_videos(root / "videos", 2, size=SIZE, frames=24, fps=8, seed=3)
    save_tiny_text_encoder(root / "t5", dim=16)
    assert encode([str(root / "videos"), str(root / "latents"), "--size", str(SIZE), "--min-frames", "8",
                   "--max-frames", "24", "--fps", "8", "--text-encoder", str(root / "t5"), "--no-progress",
                   "--decode-workers", "0"]) == 0
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    image[10:30, 20:40] = (230, 40, 40)
    Image.fromarray(image).save(root / "photo.png")
    (root / "notes.txt").write_text("not a video\n")

    cfg = dataclasses.replace(FLAVORS["tiny"], in_channels=3, text_dim=16, text_len=8)
    model = randomize_weights_(VidGPT(cfg), seed=0)
    export = root / "export"
    export.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(export / WEIGHTS))
    data = {"path": str(root / "latents"), "num_frames": 8}
    info = {"model": dataclasses.asdict(cfg), "weights": "model", "step": 1, "source": "test", "data": data,
            "diffusion": {"process": "flow", "prediction": "x0"}, "sampling": sampling_info(data)}
    (export / CONFIG).write_text(json.dumps(info))
    return {"root": root, "video": root / "videos" / "synth_00000.mp4", "image": root / "photo.png",
            "export": export, "t5": root / "t5", "text": root / "notes.txt"}


def frames_of(path: Path) -> np.ndarray:
    clips = decode_clips(str(path), DecodeOptions(height=SIZE, width=SIZE, max_frames=1 << 20))
    return np.concatenate([c.frames for c in clips])


def test_the_export_records_what_sampling_needs(files: dict[str, Path]) -> None:
    sampling = json.loads((files["export"] / "config.json").read_text())["sampling"]
    assert sampling["codec"]["name"] == "identity" and sampling["codec"]["latent_channels"] == 3
    assert sampling["size"] == [SIZE, SIZE] and sampling["fps"] == 8.0 and sampling["clip_len"] == 8
    assert sampling["text_encoder"] == str(files["t5"])


def test_continue_a_video_with_a_caption(files: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "v"
    assert sample([str(files["export"]), "--prompt", str(files["video"]), "--caption", "a red circle bouncing",
                   "--prompt-frames", "3", "--frames", "6", "--chunk", "2", "--steps", "2", "--out", str(out)]) == 0
    video = frames_of(out / "sample_000.mp4")
    assert video.shape == (9, SIZE, SIZE, 3)  # 3 prompt frames + 6 generated
    source = frames_of(files["video"])
    # the prompt is the video's last 3 frames (identity codec; mp4 written twice: lossy, close)
    assert np.abs(video[:3].astype(int) - source[-3:].astype(int)).mean() < 12
    assert (out / "sample_000.gif").exists()
    assert "3 from" in capsys.readouterr().out


def test_animate_an_image_and_a_list_of_prompts(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "i"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"path": str(files["image"]), "caption": "a red square"}) + "\n"
                       + json.dumps({"path": str(files["video"])}) + "\n")
    assert sample([str(files["export"]), "--prompts", str(prompts), "--prompt-frames", "2", "--frames", "4",
                   "--chunk", "2", "--steps", "2", "--out", str(out)]) == 0
    image_video, video_video = frames_of(out / "sample_000.mp4"), frames_of(out / "sample_001.mp4")
    assert image_video.shape == (5, SIZE, SIZE, 3)  # an image is one prompt frame
    assert video_video.shape == (6, SIZE, SIZE, 3)
    # the 48 x 64 image: scaled to 32 x 43 (short side), centre-cropped to 32 x 32; the square stays red
    red = (image_video[0, :, :, 0] > 150) & (image_video[0, :, :, 1] < 100)
    assert 50 < red.sum() < 250


@pytest.mark.parametrize("extra,match", [
    (["--prompt", "nowhere.mp4"], "nowhere.mp4: no such file"),
    (["--prompt", "TEXT"], "not a readable video or image"),
    (["--caption", "only words"], "needs a model trained with 0-frame prompts"),
    (["--prompt", "VIDEO", "--context-scale", "2"], "--context-scale 2 needs a model trained with 0-frame prompts"),
    (["--prompt", "VIDEO", "--context-scale", "-1"], "context_scale must be a number > 0"),
    (["--prompt", "VIDEO", "--chunk", "0"], "chunk must be >= 1"),
    (["--prompt", "VIDEO", "--frames", "-1"], "--frames must be >= 0"),
    (["--prompt", "VIDEO", "--fps", "0"], "--fps must be > 0"),
    (["--prompt", "VIDEO", "--window", "-1"], "window must be >= 1"),
    (["--prompt", "VIDEO", "--cfg-scale", "nan"], "argument --cfg-scale: not a finite number: 'nan'"),
    (["--prompt", "VIDEO", "--context-noise", "inf"], "argument --context-noise: not a finite number"),
    (["--prompt", "VIDEO", "--context-noise", "1.5"], "context_noise must be a number in [0, 1)"),
    (["--prompt", "VIDEO", "--context-guidance-noise", "0.5"], "context_guidance_noise needs context guidance"),
    (["--prompt", "VIDEO", "--eta", "-1"], "--eta -1: ddim_eta must be >= 0"),
])
def test_bad_inputs_get_one_line(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 extra: list[str], match: str) -> None:
    extra = [str(files["text"]) if a == "TEXT" else str(files["video"]) if a == "VIDEO" else a for a in extra]
    with pytest.raises(SystemExit) as exc:
        sample([str(files["export"]), *extra, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and match in err, err


def test_ctrl_c_keeps_the_finished_videos_and_says_where(files: dict[str, Path], tmp_path: Path) -> None:
    """SIGINT while the second of three videos is generated: exit 130, one line naming the finished video,
    which is a complete, readable mp4; no traceback."""
    out = tmp_path / "c"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"path": str(files["video"])}) + "\n" for _ in range(3)))
    proc = subprocess.Popen([sys.executable, "-m", "vidgpt.sample", str(files["export"]), "--prompts", str(prompts),
                             "--frames", "120", "--chunk", "1", "--steps", "4", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # the command restores it
    assert proc.stderr is not None
    for line in proc.stderr:  # progress lines: "  video 2/3: ..." once the first video is written
        if "video 2/3" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "vidgpt-sample: interrupted; 1 finished video(s) are in" in err and "Traceback" not in err
    assert frames_of(out / "sample_000.mp4").shape == (122, SIZE, SIZE, 3)
    assert not (out / "sample_001.mp4").exists()


def test_dataset_prompts_longer_than_the_clips_are_refused(files: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:  # the clips have 24 frames
        sample([str(files["export"]), "--data", str(files["root"] / "latents"), "--prompt-frames", "30",
                "--frames", "2", "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "has only 24 frames" in err and len(err.splitlines()) == 1
    assert sample([str(files["export"]), "--data", str(files["root"] / "latents"), "--prompt-frames", "4",
                   "--frames", "2", "--chunk", "2", "--steps", "1", "--num", "1", "--out", str(tmp_path / "ok")]) == 0


def test_text_to_video_only_for_models_trained_without_prompts(files: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--caption", "a blue square bouncing", "--frames", "6", "--chunk", "2", "--steps", "2"]
    with pytest.raises(SystemExit) as exc:  # trained with prompts of >= 1 frame: refused, saying why
        sample([str(files["export"]), *args, "--out", str(tmp_path / "no")])
    assert exc.value.code == 2
    assert "needs a model trained with 0-frame prompts" in capsys.readouterr().err
    export = tmp_path / "t2v_export"
    shutil.copytree(files["export"], export)
    info = json.loads((export / "config.json").read_text())
    info["diffusion"].update(prompt_rule="uniform", prompt_min_len=0)
    (export / "config.json").write_text(json.dumps(info))
    out = tmp_path / "t2v"
    assert sample([str(export), *args, "--out", str(out)]) == 0
    assert frames_of(out / "sample_000.mp4").shape == (6, SIZE, SIZE, 3)  # every frame generated
    assert "text to video, caption 'a blue square bouncing'" in capsys.readouterr().out
    listed = tmp_path / "list.jsonl"  # a line without "path" is text to video too
    listed.write_text(json.dumps({"caption": "a red circle"}) + "\n" + json.dumps({"path": str(files["image"])}) + "\n")
    assert sample([str(export), "--prompts", str(listed), "--frames", "4", "--chunk", "2", "--steps", "2",
                   "--out", str(tmp_path / "mixed")]) == 0
    assert frames_of(tmp_path / "mixed" / "sample_000.mp4").shape[0] == 4
    assert frames_of(tmp_path / "mixed" / "sample_001.mp4").shape[0] == 5  # the image, then 4 frames


def test_continue_a_video_through_an_sd_vae_export(files: dict[str, Path], tmp_path: Path) -> None:
    """A random tiny AutoencoderKL saved to a temp dir: the prompt is encoded with it, the output decoded."""
    vae = save_tiny_vae(tmp_path / "vae")
    codec = build_codec("sd-vae", vae=str(vae))
    cfg = dataclasses.replace(FLAVORS["tiny"], in_channels=codec.latent_channels, text_dim=16, text_len=8)
    export = tmp_path / "export"
    export.mkdir()
    model = randomize_weights_(VidGPT(cfg), seed=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(export / WEIGHTS))
    sampling = {"codec": codec.describe(), "size": [SIZE, SIZE], "fps": 8.0, "clip_len": 8,
                "text_encoder": str(files["t5"])}
    info = {"model": dataclasses.asdict(cfg), "weights": "model", "step": 1, "source": "test", "data": {},
            "diffusion": {"process": "flow", "prediction": "x0"}, "sampling": sampling}
    (export / CONFIG).write_text(json.dumps(info))
    out = tmp_path / "vae_out"
    assert sample([str(export), "--prompt", str(files["video"]), "--caption", "a square", "--prompt-frames", "2",
                   "--frames", "4", "--chunk", "2", "--steps", "2", "--out", str(out)]) == 0
    assert frames_of(out / "sample_000.mp4").shape == (6, SIZE, SIZE, 3)  # 2 prompt frames + 4, at full size


def test_chunk_and_window_default_to_the_training_clip_length() -> None:
    """The sampling flags are SamplingSpec's: chunk min(8, L/2) and window L - chunk unless given; a prompt as
    long as the clip is not refused here (it is continued); an export without a clip length: 4 and 8."""
    def filled(spec: SamplingSpec, clip_len: int | None) -> tuple[int | None, int | None]:
        done = with_chunk_and_window(spec, clip_len)
        return done.chunk, done.window

    assert filled(SamplingSpec(), 8) == (4, 4) and filled(SamplingSpec(), 33) == (8, 25)
    assert filled(SamplingSpec(chunk=2), 8) == (2, 6) and filled(SamplingSpec(window=3), 8) == (4, 3)
    assert filled(SamplingSpec(prompt_frames=30), 8) == (4, 4)
    assert filled(SamplingSpec(), None) == (4, 8) and filled(SamplingSpec(chunk=2), None) == (2, 8)


def test_a_teacher_forced_model_is_sampled_frame_by_frame(files: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A model trained with objective.teacher_forcing never saw two noisy frames together: --chunk 2 is
    refused in one line naming the flag to use; --chunk 1 samples."""
    export = tmp_path / "tf_export"
    shutil.copytree(files["export"], export)
    info = json.loads((export / "config.json").read_text())
    info.setdefault("objective", {})["teacher_forcing"] = True
    (export / "config.json").write_text(json.dumps(info))
    args = ["--prompt", str(files["video"]), "--frames", "2", "--steps", "1", "--num", "1"]
    with pytest.raises(SystemExit) as exc:
        sample([str(export), *args, "--chunk", "2", "--out", str(tmp_path / "no")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1, err
    assert "--chunk 2" in err and "teacher_forcing" in err and "--chunk 1" in err
    assert not (tmp_path / "no").exists()
    assert sample([str(export), *args, "--chunk", "1", "--out", str(tmp_path / "ok")]) == 0
    assert sample([str(files["export"]), *args, "--chunk", "2", "--out", str(tmp_path / "plain")]) == 0
