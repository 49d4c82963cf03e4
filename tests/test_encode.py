"""The offline encoding tool, end to end, on real mp4 files, a real S3 server (moto) and real signals."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline import storage
from data_pipeline.codecs import IdentityCodec
from data_pipeline.encode import main as encode_main
from data_pipeline.encode import parse_config
from data_pipeline.index import read_json
from data_pipeline.inputs import InputItem
from data_pipeline.lock import LockHeld, WorkerLock
from data_pipeline.s3_server import start_moto_server
from data_pipeline.shards import read_samples
from data_pipeline.synthetic import make_synthetic_videos
from data_pipeline.text import TextEncoder, save_tiny_text_encoder
from data_pipeline.video import DecodeOptions, decode_clips, write_video

from conftest import remount

ARGS = ["--size", "32", "--min-frames", "8", "--max-frames", "16", "--shard-samples", "3", "--no-progress"]
BAD = {
    "bad_corrupt.mp4": "corrupt",
    "bad_empty.mp4": "empty",
    "bad_text.mp4": "text",
    "bad_short.mp4": "short",
    "bad_truncated.mp4": "truncated",
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 synthetic videos (with captions) and one of each kind of bad input."""
    root = tmp_path_factory.mktemp("videos")
    good = make_synthetic_videos(root, 6, size=48, frames=24, fps=8, seed=3)
    (root / "manifest.jsonl").unlink()
    rng = np.random.default_rng(0)
    (root / "bad_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + rng.bytes(4000))
    (root / "bad_empty.mp4").write_bytes(b"")
    (root / "bad_text.mp4").write_text("this is not a video\n")
    write_video(root / "bad_short.mp4", rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8), fps=8)
    data = good[0].read_bytes()
    (root / "bad_truncated.mp4").write_bytes(data[: len(data) // 2])
    return root


def encode(args: list[str]) -> int:
    return encode_main([*args, "--decode-workers", "1"])


def samples_of(root: str) -> dict[str, dict]:
    """key -> {latents bytes, json, txt} of every sample in every shard of the index, read with tarfile."""
    index = read_json(storage.join(root, "index.json"))
    out: dict[str, dict] = {}
    for shard in index["shards"]:
        data = storage.read_bytes(storage.join(root, shard["path"]))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def local_dataset(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "local"
    assert encode([str(videos), str(out), *ARGS]) == 0
    return out


def test_encode_local_index_and_failures(local_dataset: Path) -> None:
    index = json.loads((local_dataset / "index.json").read_text())
    assert index["inputs"] == {"total": 11, "ok": 6, "failed": 5}
    assert index["codec"]["name"] == "identity" and index["size"] == [32, 32]
    # 24 frames at max 16 -> clips of 16 and 8 per video
    assert index["num_samples"] == 12 and index["num_frames"] == 6 * 24
    # a shard closes at the first video boundary at or past --shard-samples (videos never straddle shards)
    assert index["num_shards"] == 3 and all(s["samples"] == 4 for s in index["shards"])
    failures = [json.loads(line) for line in (local_dataset / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["input"] for f in failures) == sorted(BAD)
    reasons = {f["input"]: f["reason"] for f in failures}
    assert "too short" in reasons["bad_short.mp4"]
    assert all(r and "\n" not in r for r in reasons.values())
    # nothing half-written is left behind
    assert not list(local_dataset.rglob("*.partial")) and not list(local_dataset.rglob(".staging*"))


def test_shards_read_back_with_tarfile_and_webdataset(local_dataset: Path, videos: Path) -> None:
    import webdataset as wds

    index = json.loads((local_dataset / "index.json").read_text())
    urls = [str(local_dataset / s["path"]) for s in index["shards"]]
    for shard, url in zip(index["shards"], urls):
        assert hashlib.sha256(Path(url).read_bytes()).hexdigest() == shard["sha256"]
        assert os.path.getsize(url) == shard["bytes"]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        lat = np.load(io.BytesIO(sample["latents.npy"]), allow_pickle=False)
        meta = json.loads(sample["json"])
        assert lat.dtype == np.float16 and lat.shape[1:] == (3, 32, 32)
        assert sample["txt"].decode() == meta["caption"] and meta["caption"]
        seen[sample["__key__"]] = (lat, meta)
    assert len(seen) == 12
    # bytes round trip: a stored clip equals the identity codec applied to PyAV's decode of the source
    key, (lat, meta) = sorted(seen.items())[0]
    clips = decode_clips(videos / meta["source"], DecodeOptions(height=32, width=32, min_frames=8, max_frames=16))
    want = IdentityCodec().encode(clips[meta["clip"]].frames).astype(np.float16)
    np.testing.assert_array_equal(lat, want)
    assert meta["frame_indices"] == clips[meta["clip"]].frame_indices
    # byte offsets in the index fetch single samples
    shard = index["shards"][1]
    got = read_samples(str(local_dataset / shard["path"]), shard["offsets"], 1, 2)[0]
    assert got.key == shard["keys"][1]


def test_rerun_is_idempotent(local_dataset: Path, videos: Path) -> None:
    before = {p: p.read_bytes() for p in local_dataset.rglob("*") if p.is_file()}
    assert encode([str(videos), str(local_dataset), *ARGS]) == 0
    after = {p: p.read_bytes() for p in local_dataset.rglob("*") if p.is_file()}
    assert after == before


def test_rerun_with_other_parameters_is_refused(local_dataset: Path, videos: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    args = [a if a != "16" else "12" for a in ARGS]
    assert encode([str(videos), str(local_dataset), *args]) != 0
    err = capsys.readouterr().err
    assert "max_frames: was 16, now 12" in err and err.count("\n") == 1


def test_encode_to_s3_matches_local(local_dataset: Path, videos: Path, s3_bucket: str) -> None:
    out = f"{s3_bucket}/latents/v1"
    assert encode([str(videos), out, *ARGS]) == 0
    index_s3 = read_json(f"{out}/index.json")
    index_local = json.loads((local_dataset / "index.json").read_text())
    assert index_s3 == index_local  # same shards, byte for byte (sha256), same offsets and keys
    assert samples_of(out) == samples_of(str(local_dataset))
    names = storage.list_files(out)
    assert f"{out}/failures.jsonl" in names and not any(n.endswith(".partial") for n in names)


def test_worker_split_and_merge(videos: Path, local_dataset: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "split"
    assert encode([str(videos), str(out), *ARGS, "--num-workers-total", "2", "--worker-index", "1"]) == 0
    assert not (out / "index.json").exists()
    assert encode_main(["merge-index", str(out)]) == 1
    assert "worker(s) 0 of 2 have not finished" in capsys.readouterr().err
    assert encode([str(videos), str(out), *ARGS, "--num-workers-total", "2", "--worker-index", "0"]) == 0
    assert (out / "index.json").exists()  # the last worker to finish merged
    assert samples_of(str(out)) == samples_of(str(local_dataset))
    assert encode_main(["merge-index", str(out)]) == 0


def test_slurm_array_variables_set_the_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")
    cfg = parse_config(["in", "out"])
    assert (cfg.num_workers_total, cfg.worker_index) == (4, 2)
    cfg = parse_config(["in", "out", "--num-workers-total", "3", "--worker-index", "0"])
    assert (cfg.num_workers_total, cfg.worker_index) == (3, 0)


def test_killed_run_resumes_to_the_same_dataset(videos: Path, local_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "data_pipeline.encode", str(videos), str(out), *ARGS,
           "--shard-samples", "1", "--decode-workers", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = out / "_progress"
    deadline = time.monotonic() + 60
    while not (progress.exists() and len(list(progress.glob("w*-000001.json"))) >= 1):
        assert proc.poll() is None, "the encoder finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "index.json").exists()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    index = json.loads((out / "index.json").read_text())
    assert index["inputs"] == {"total": 11, "ok": 6, "failed": 5}
    # every input exactly once: the same samples as the uninterrupted run, no duplicate
    keys = [k for s in index["shards"] for k in s["keys"]]
    assert len(keys) == len(set(keys)) == 12
    assert samples_of(str(out)) == samples_of(str(local_dataset))
    assert len((out / "failures.jsonl").read_text().splitlines()) == 5


def test_manifest_with_captions_windows_and_text_embeddings(videos: Path, tmp_path: Path) -> None:
    t5 = tmp_path / "t5"
    save_tiny_text_encoder(t5, dim=16)
    manifest = tmp_path / "list.jsonl"
    rows = [
        {"path": str(videos / "synth_00000.mp4"), "caption": "first one"},
        {"path": "missing.mp4"},
        {"path": str(videos / "synth_00001.mp4"), "caption": "second, cut", "start": 1.0, "end": 2.5},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "m"
    assert encode([str(manifest), str(out), *ARGS, "--text-encoder", str(t5)]) == 0
    got = {json.loads(v["json"])["source"]: v for v in samples_of(str(out)).values()}
    first = got[str(videos / "synth_00000.mp4")]
    assert first["txt"] == b"first one"
    text = np.load(io.BytesIO(first["text.npy"]), allow_pickle=False)
    want = TextEncoder(str(t5)).encode(["first one"])[0]
    np.testing.assert_array_equal(text, want)
    cut = json.loads(got[str(videos / "synth_00001.mp4")]["json"])
    assert cut["caption"] == "second, cut" and 1.0 <= cut["start_time"] < 1.2
    lat = np.load(io.BytesIO(got[str(videos / "synth_00001.mp4")]["latents.npy"]))
    assert lat.shape[0] == 12  # 1.5 s at 8 fps
    failures = (out / "failures.jsonl").read_text()
    assert "missing.mp4" in failures and "No such file" in json.loads(failures)["reason"]

    csv = tmp_path / "list.csv"
    csv.write_text(f"path,caption\n{videos / 'synth_00002.mp4'},from csv\n")
    assert encode([str(csv), str(tmp_path / "c"), *ARGS]) == 0
    assert [v["txt"] for v in samples_of(str(tmp_path / "c")).values()] == [b"from csv"] * 2  # 2 clips


@pytest.mark.parametrize("row,match", [
    ({"caption": 123}, "list.jsonl:2: caption must be text, got 123"),
    ({"start": 2.0, "end": 1.0}, "list.jsonl:2: end (1 s) must be after start (2 s)"),
    ({"start": "nan"}, "list.jsonl:2: start/end must be seconds >= 0"),
])
def test_a_bad_manifest_line_is_named_before_anything_is_written(videos: Path, tmp_path: Path, row: dict,
                                                                 match: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The whole manifest is checked before the output is touched, so the corrected re-run is a first run."""
    manifest, out = tmp_path / "list.jsonl", tmp_path / "out"
    good = {"path": str(videos / "synth_00000.mp4"), "caption": "fine"}
    manifest.write_text(json.dumps(good) + "\n" + json.dumps({"path": str(videos / "synth_00001.mp4"), **row}) + "\n")
    assert encode([str(manifest), str(out), *ARGS]) == 2  # bad input
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1, err
    assert not out.exists()
    manifest.write_text(json.dumps(good) + "\n")
    assert encode([str(manifest), str(out), *ARGS]) == 0


def test_a_caption_file_that_is_not_utf8_is_said_and_cleaned(videos: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(videos / "synth_00000.mp4", src / "clip.mp4")
    (src / "clip.txt").write_bytes(b"caf\xe9 on a \x00 street")  # Latin-1 and a NUL
    assert encode([str(src), str(tmp_path / "out"), *ARGS]) == 0
    err = capsys.readouterr().err
    assert f"{src / 'clip.txt'}: caption is not UTF-8 (byte 3" in err
    assert "caption has control characters (removed)" in err
    shard = next((tmp_path / "out" / "shards").glob("*.tar"))
    with tarfile.open(shard) as tar:
        meta = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith(".json"))).read())
    assert meta["caption"] == "caf\ufffd on a  street"


def test_a_full_disk_is_one_line_and_the_rerun_after_freeing_space_finishes(
        tmp_path: Path, small_filesystem: Callable[[str], Path], capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "many"
    make_synthetic_videos(src, 16, size=32, frames=24, fps=8, seed=4)
    disk = small_filesystem("1m")  # about a third of what the shards need
    out = disk / "out"
    args = [str(src), str(out), "--size", "32", "--min-frames", "8", "--max-frames", "24", "--shard-samples", "2",
            "--no-progress", "--decode-workers", "0"]
    assert encode(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vidgpt-encode: error: no space left on the device writing" in err, err
    assert "re-run the same command" in err
    kept = len(list((out / "shards").glob("*.tar")))
    assert kept >= 1  # the shards finished before the disk filled stay
    remount(disk, "16m")
    assert encode(args) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["inputs"]["ok"] == 16 and index["num_samples"] == 16


def test_captions_are_embedded_in_batches_ahead_of_their_videos(videos: Path, tmp_path: Path) -> None:
    """5 captioned videos, 2 captions per T5 call: 3 calls, not 5, and the same embeddings as one by one."""
    t5 = tmp_path / "t5"
    save_tiny_text_encoder(t5, dim=16)
    names = [f"synth_{i:05d}.mp4" for i in range(5)]
    captions = [f"caption number {i} " + "long " * i for i in range(5)]  # different lengths: padding in a batch
    manifest = tmp_path / "list.jsonl"
    rows = [{"path": str(videos / n), "caption": c} for n, c in zip(names, captions)]
    rows.insert(2, {"path": str(videos / "synth_00005.mp4")})  # no caption: skipped by the batches
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls: list[int] = []
    original = TextEncoder.encode

    def counting(self, texts):  # noqa: ANN001, ANN202
        calls.append(len(texts))
        return original(self, texts)

    TextEncoder.encode = counting  # type: ignore[method-assign]
    try:
        assert encode([str(manifest), str(tmp_path / "out"), *ARGS, "--text-encoder", str(t5),
                       "--text-batch-size", "2"]) == 0
    finally:
        TextEncoder.encode = original  # type: ignore[method-assign]
    assert calls == [2, 2, 1]
    single = TextEncoder(str(t5))
    for sample in samples_of(str(tmp_path / "out")).values():
        caption = sample.get("txt", b"").decode()
        if caption:
            got = np.load(io.BytesIO(sample["text.npy"]), allow_pickle=False)
            np.testing.assert_allclose(got.astype(np.float32), single.encode([caption])[0].astype(np.float32),
                                       rtol=0, atol=2e-3)
    bad = subprocess.run([sys.executable, "-m", "data_pipeline.encode", str(manifest), str(tmp_path / "x"),
                          "--text-batch-size", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid --text-batch-size" in bad.stderr


def test_sd_vae_codec_through_the_encoder(videos: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8,
        latent_channels=4, sample_size=32, scaling_factor=0.5,
    )
    vae.save_pretrained(tmp_path / "vae")
    out = tmp_path / "vae_ds"
    assert encode([str(videos), str(out), *ARGS, "--codec", "sd-vae", "--vae", str(tmp_path / "vae")]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["codec"]["name"] == "sd-vae" and index["codec"]["scale_factor"] == 0.5
    for raw in samples_of(str(out)).values():
        lat = np.load(io.BytesIO(raw["latents.npy"]), allow_pickle=False)
        assert lat.shape[1:] == (4, 16, 16) and np.isfinite(lat).all()


def test_bad_arguments_and_unreachable_s3(videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        encode_main([str(videos), str(tmp_path / "x"), "--codec", "sd-vae"])
    assert exc.value.code == 2
    assert "--codec sd-vae needs --vae" in capsys.readouterr().err
    assert encode_main([str(tmp_path / "nope"), str(tmp_path / "x")]) == 2
    assert "not a directory, nor a .jsonl/.csv manifest" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("data\n")
    with pytest.raises(SystemExit) as exc:  # an OUTPUT that is a file is a bad argument, as README says
        encode_main([str(videos), str(tmp_path / "a_file")])
    assert exc.value.code == 2 and "OUTPUT" in capsys.readouterr().err
    assert (tmp_path / "a_file").read_text() == "data\n"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("VIDGPT_S3_MAX_ATTEMPTS", "1")
    assert encode([str(videos), "s3://bucket/out", *ARGS]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the S3 endpoint http://127.0.0.1:9" in err and err.count("\n") == 1


def test_second_encoder_on_one_output_is_refused(videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    holder = WorkerLock(str(out / "_progress" / "w00000-of00001.lock"))
    holder.acquire()  # a live encoder (this process) writes worker 0's output
    try:
        assert encode([str(videos), str(out), *ARGS]) == 1
        err = capsys.readouterr().err
        assert "another encoder is writing this worker's output" in err and err.count("\n") == 1
        assert not (out / "shards").exists() and not (out / "_progress" / "job.json").exists()  # nothing touched
    finally:
        holder.release()
    # a lock left by a process that died (kill -9, a node lost) is taken over without --break-lock
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = time.time()
    lock = out / "_progress" / "w00000-of00001.lock"
    lock.write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": int(dead.stdout), "token": "old",
                                "started": now, "refreshed": now}))
    assert encode([str(videos), str(out), *ARGS]) == 0
    assert (out / "index.json").exists() and not lock.exists()


def test_a_requeued_slurm_job_takes_over_the_lock_of_its_earlier_run(tmp_path: Path) -> None:
    """A lock written on another node by run 0 of SLURM job 42 looks alive (fresh, a pid we cannot check),
    yet job 42's requeued run 1 takes it over at once; another job, or the same run, is refused."""
    uri = str(tmp_path / "run.lock")
    now = time.time()
    old = {"host": "node-that-died", "pid": 4242, "token": "old", "started": now, "refreshed": now,
           "slurm_job": "42", "slurm_restart": 0}
    for environ in ({"SLURM_JOB_ID": "43", "SLURM_RESTART_COUNT": "1"}, {"SLURM_JOB_ID": "42"}, {}):
        Path(uri).write_text(json.dumps(old))
        with pytest.raises(LockHeld, match="host node-that-died, pid 4242, SLURM job 42"):
            WorkerLock(uri, environ=environ).acquire()
    requeued = WorkerLock(uri, environ={"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "1"})
    requeued.acquire()
    try:
        held = json.loads(Path(uri).read_text())
        assert held["token"] == requeued.token and held["slurm_job"] == "42" and held["slurm_restart"] == 1
    finally:
        requeued.release()
    assert not Path(uri).exists()


def test_s3_lock_is_a_conditional_put(s3_bucket: str) -> None:
    uri = f"{s3_bucket}/out/_progress/w00000-of00001.lock"
    assert storage.create_exclusive(uri, b"first") and not storage.create_exclusive(uri, b"second")
    assert storage.read_bytes(uri) == b"first"
    storage.delete(uri)
    with WorkerLock(uri):
        with pytest.raises(LockHeld, match="another encoder"):
            WorkerLock(uri).acquire()
    assert not storage.exists(uri)


def test_encoder_stops_when_s3_goes_away_and_says_what_was_not_written(
    tmp_path: Path, s3_server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    many = tmp_path / "many"
    make_synthetic_videos(many, 30, size=16, frames=8, fps=8, seed=5)
    proc, url = start_moto_server()  # a server of its own, stopped once the first shard is uploaded
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("VIDGPT_S3_MAX_ATTEMPTS", "1")
        storage.s3_client().create_bucket(Bucket="gone")

        def stop_when_started() -> None:
            while not storage.list_files("s3://gone/out/shards"):  # the first shard is up
                time.sleep(0.02)
            proc.kill()

        watcher = threading.Thread(target=stop_when_started, daemon=True)
        watcher.start()
        code = encode([str(many), "s3://gone/out", "--size", "16", "--min-frames", "4", "--shard-samples", "1",
                       "--no-progress"])
        watcher.join(timeout=30)
    finally:
        proc.kill()
    out, err = capsys.readouterr()
    assert code == 1 and out, err
    summary = json.loads(out)
    assert summary["not_written"] >= 3 and summary["ok"] + summary["not_written"] <= summary["encoded"] < 30
    assert "stopped encoding after 3 shards in a row could not be written" in err
    assert f"{summary['not_written']} input(s) were encoded but not written" in err


def test_merge_refuses_a_record_that_does_not_match_its_shard(local_dataset: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(local_dataset, copy)
    shard = sorted((copy / "shards").glob("*.tar"))[1]
    shard.write_bytes(shard.read_bytes() + bytes(512))  # as a second writer's shard of another size
    assert encode_main(["merge-index", str(copy)]) == 1
    err = capsys.readouterr().err
    assert f"its shard {shard} has" in err and "two encoders" in err
    shard.unlink()
    assert encode_main(["merge-index", str(copy)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_help_documents_every_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "data_pipeline.encode", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--codec", "--vae", "--size", "--fps", "--min-frames", "--max-frames", "--num-workers-total",
                 "--worker-index", "--decode-workers", "--text-encoder", "--shard-samples", "--shard-mb"):
        assert flag in out.stdout
    assert InputItem("a.mp4", "a.mp4").id == InputItem("x/a.mp4", "a.mp4").id  # ids follow names, not locations
