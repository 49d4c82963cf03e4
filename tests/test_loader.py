"""The streaming latent loader: equal work per rank, determinism, exact resume, bad shards, S3."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch._utils import ExceptionWrapper

from data_pipeline import storage
from data_pipeline.index import write_index
from data_pipeline.loader import DataError, LatentLoader, LoaderConfig, error_line, expand_braces, load_table, split_equal
from data_pipeline.s3_server import start_moto_server
from data_pipeline.shards import Sample, ShardBuilder
from vidgpt.distributed import free_port

SIZES = [1, 7, 3, 12, 5, 2]  # deliberately uneven shards: 30 samples
JOB = {"codec": {"name": "identity", "scale_factor": 1.0}, "size": [4, 4], "num_inputs": 6}


def make_dataset(root: str, sizes: list[int] = SIZES, seed: int = 0, text: bool = False,
                 shapes: tuple[tuple[int, int], ...] | list[tuple[int, int]] = ((4, 4),)) -> dict[str, np.ndarray]:
    """Shards of random clips (6..12 frames of (2, 4, 4)) at root, with index.json; returns key -> latents.
    shapes: latent (H, W) sizes, one drawn per clip when there are several (a bucketed dataset)."""
    rng = np.random.default_rng(seed)
    staging = Path(os.environ.get("TMPDIR", "/tmp")) / f"loader-staging-{os.getpid()}-{rng.integers(1 << 30)}"
    shards, clips = [], {}
    for s, n in enumerate(sizes):
        name = f"shards/part-{s:03d}.tar"
        builder = ShardBuilder(staging / f"{s}.tar", name)
        for i in range(n):
            key = f"s{s}-{i}"
            hw = shapes[int(rng.integers(len(shapes)))] if len(shapes) > 1 else shapes[0]
            lat = rng.standard_normal((int(rng.integers(6, 13)), 2, *hw)).astype(np.float16)
            emb = rng.standard_normal((int(rng.integers(2, 6)), 8)).astype(np.float16) if text else None
            builder.add(Sample(key, lat, {"source": key}, caption=f"clip {key}", text=emb))
            clips[key] = lat
        info = builder.close()
        storage.upload_file(builder.local_path, storage.join(root, name))
        shards.append(info.to_json())
    write_index(root, shards, JOB)
    return clips


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[str, dict[str, np.ndarray]]:
    root = str(tmp_path / "ds")
    return root, make_dataset(root)


def cfg(root: str, **kw: object) -> LoaderConfig:
    base = dict(num_frames=4, batch_size=2, shuffle_buffer=5, num_workers=0, seed=7)
    base.update(kw)
    return LoaderConfig(root, **base)  # type: ignore[arg-type]


def epoch(loader: LatentLoader, limit: int | None = None) -> list[dict]:
    out = []
    for batch in loader:
        out.append(batch)
        if limit is not None and len(out) == limit:
            break
    return out


def positions(batches: list[dict]) -> list[int]:
    return [p for b in batches for p in b["positions"].tolist()]


def test_split_equal_and_braces() -> None:
    parts = split_equal([(0, 5), (10, 14), (20, 21)], parts=2, multiple=2)
    assert parts == [[(0, 4)], [(4, 5), (10, 13)]]  # 10 samples -> 2 x 4, the last 2 sit out
    assert expand_braces("a/b-{008..011}.tar") == ["a/b-008.tar", "a/b-009.tar", "a/b-010.tar", "a/b-011.tar"]


@pytest.mark.parametrize("world,workers,batch", [(1, 0, 4), (2, 2, 2), (3, 1, 3), (4, 2, 1), (2, 3, 2)])
def test_every_rank_gets_the_same_number_of_batches(dataset, world: int, workers: int, batch: int) -> None:  # noqa: ANN001
    root, _ = dataset
    counts, seen = [], []
    for rank in range(world):
        loader = LatentLoader(cfg(root, num_workers=workers, batch_size=batch), rank, world)
        batches = epoch(loader)
        assert len(batches) == len(loader)
        assert all(b["latents"].shape == (batch, 4, 2, 4, 4) for b in batches)
        counts.append(len(batches))
        seen += positions(batches)
    readers = world * max(workers, 1) * batch
    assert counts == [30 // readers * max(workers, 1)] * world
    assert len(seen) == len(set(seen)) == 30 // readers * readers


def _distributed_worker(rank: int, world: int, root: str, port: int, result: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=__import__("datetime").timedelta(seconds=60))
    loader = LatentLoader(cfg(root, num_workers=1, batch_size=3), rank, world)
    steps = 0
    for batch in loader:  # a collective per batch: unequal batch counts would hang here
        total = batch["latents"].float().sum()
        dist.all_reduce(total)
        steps += 1
    dist.barrier()
    Path(result, f"{rank}.json").write_text(json.dumps({"steps": steps}))
    dist.destroy_process_group()


def test_distributed_ranks_finish_together(dataset, tmp_path: Path) -> None:  # noqa: ANN001
    root, _ = dataset
    port = free_port()
    mp.spawn(_distributed_worker, args=(3, root, port, str(tmp_path)), nprocs=3, join=True)
    steps = [json.loads((tmp_path / f"{r}.json").read_text())["steps"] for r in range(3)]
    assert steps == [3, 3, 3]  # 30 samples / (3 ranks x 1 worker x 3) = 3 batches each, 3 samples sit out


def test_batches_carry_the_stored_clips(dataset) -> None:  # noqa: ANN001
    root, clips = dataset
    for batch in epoch(LatentLoader(cfg(root, num_frames=8))):
        for i, key in enumerate(batch["keys"]):
            clip, start = clips[key], int(batch["frame_start"][i])
            got = batch["latents"][i].numpy()
            n = min(8, len(clip))
            assert 0 <= start <= max(0, len(clip) - 8)
            np.testing.assert_array_equal(got[:n], clip[start : start + n])
            assert batch["valid"][i].tolist() == [True] * n + [False] * (8 - n)
            assert not got[n:].any()
            assert batch["captions"][i] == f"clip {key}"


def test_whole_clip_mode_pads_and_masks(dataset) -> None:  # noqa: ANN001
    root, clips = dataset
    for batch in epoch(LatentLoader(cfg(root, num_frames=12, crop="whole"))):
        for i, key in enumerate(batch["keys"]):
            n = len(clips[key])
            assert int(batch["valid"][i].sum()) == n and int(batch["frame_start"][i]) == 0
            np.testing.assert_array_equal(batch["latents"][i, :n].numpy(), clips[key])


def test_deterministic_for_a_seed_and_epoch(dataset) -> None:  # noqa: ANN001
    root, _ = dataset
    a = epoch(LatentLoader(cfg(root, num_workers=2)))
    b = epoch(LatentLoader(cfg(root, num_workers=2)))
    assert positions(a) == positions(b)
    assert all(torch.equal(x["latents"], y["latents"]) for x, y in zip(a, b))
    c = epoch(LatentLoader(cfg(root, num_workers=2, seed=8)))
    assert positions(c) != positions(a)
    loader = LatentLoader(cfg(root, num_workers=2))
    first = positions(epoch(loader))
    assert loader.epoch == 1
    second = positions(epoch(loader))
    assert second != first
    assert len(set(first)) == len(set(second)) == 28  # 2 workers x batch 2: 2 of 30 sit out each epoch


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("consumed", [1, 3, 6])
def test_resume_equals_uninterrupted(dataset, workers: int, consumed: int) -> None:  # noqa: ANN001
    root, _ = dataset
    uninterrupted = LatentLoader(cfg(root, num_workers=workers))
    full, next_epoch = epoch(uninterrupted), epoch(uninterrupted)
    loader = LatentLoader(cfg(root, num_workers=workers))
    head = epoch(loader, limit=consumed)
    state = json.loads(json.dumps(loader.state_dict()))  # survives a JSON round trip
    resumed = LatentLoader(cfg(root, num_workers=workers))
    resumed.load_state_dict(state)
    tail = epoch(resumed)
    assert positions(head + tail) == positions(full)
    assert all(torch.equal(x["latents"], y["latents"]) for x, y in zip(head + tail, full))
    assert resumed.epoch == 1  # and the next epoch follows as usual
    assert positions(epoch(resumed)) == positions(next_epoch)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_prepared_ahead_for_pinning_are_the_same_and_resume_the_same(dataset, workers: int) -> None:  # noqa: ANN001
    """pin_memory: batches become tensors on a background thread one batch ahead (pinned where CUDA is);
    the batches, their order and the resume position do not change."""
    root, _ = dataset
    plain = epoch(LatentLoader(cfg(root, num_workers=workers)))
    loader = LatentLoader(cfg(root, num_workers=workers, pin_memory=True))
    head = epoch(loader, limit=3)
    assert loader.state_dict()["batches"] == 3  # the batch prepared ahead is not counted as consumed
    resumed = LatentLoader(cfg(root, num_workers=workers, pin_memory=True))
    resumed.load_state_dict(loader.state_dict())
    pinned = head + epoch(resumed)
    assert positions(pinned) == positions(plain)
    assert all(isinstance(b["latents"], torch.Tensor) for b in pinned)
    assert all(torch.equal(x["latents"], y["latents"]) for x, y in zip(pinned, plain))


@pytest.mark.parametrize("new_world,new_workers", [(1, 0), (3, 1), (1, 2)])
def test_resume_on_a_different_number_of_ranks(dataset, new_world: int, new_workers: int) -> None:  # noqa: ANN001
    root, _ = dataset
    old = [LatentLoader(cfg(root, num_workers=2, batch_size=2), r, 2) for r in range(2)]
    planned = set()
    for r in range(2):
        planned |= set(positions(epoch(LatentLoader(cfg(root, num_workers=2, batch_size=2), r, 2))))
    consumed = []
    for loader in old:
        consumed += positions(epoch(loader, limit=3))
    state = old[0].state_dict()
    assert old[1].state_dict() == state  # every rank consumed the same number of batches
    after = []
    for r in range(new_world):
        loader = LatentLoader(cfg(root, num_workers=new_workers, batch_size=2), r, new_world)
        loader.load_state_dict(state)
        after += positions(epoch(loader))
        assert loader.epoch == 1
    assert not set(after) & set(consumed)  # nothing seen twice
    assert len(after) == len(set(after))
    remaining = planned - set(consumed)
    assert set(after) <= remaining
    readers = new_world * max(new_workers, 1) * 2
    assert len(after) == len(remaining) // readers * readers  # only the equalising remainder sits out


def test_resume_reads_no_consumed_sample(dataset, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    root, _ = dataset
    index = json.loads(Path(root, "index.json").read_text())
    loader = LatentLoader(cfg(root))
    head = epoch(loader, limit=6)
    consumed = {k for b in head for k in b["keys"]}
    spans = {}
    for shard in index["shards"]:
        uri = storage.join(root, shard["path"])
        for i, key in enumerate(shard["keys"]):
            spans[key] = (uri, shard["offsets"][i], shard["offsets"][i + 1])
    reads: list[tuple[str, int, int]] = []
    real = storage.read_bytes

    def spy(uri: str, start: int | None = None, end: int | None = None) -> bytes:
        reads.append((uri, start or 0, end if end is not None else 1 << 62))
        return real(uri, start, end)

    monkeypatch.setattr(storage, "read_bytes", spy)
    resumed = LatentLoader(cfg(root))
    resumed.load_state_dict(loader.state_dict())
    epoch(resumed)
    assert reads
    for key in consumed:
        uri, lo, hi = spans[key]
        assert not any(u == uri and a < hi and lo < b for u, a, b in reads), f"re-read consumed sample {key}"


def test_truncated_shard_is_skipped_then_refused(dataset, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    root, _ = dataset
    shard = Path(root, "shards", "part-003.tar")  # the 12-sample shard
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="vidgpt.data"):
        loader = LatentLoader(cfg(root, max_bad_fraction=0.5))
        batches = epoch(loader)
    assert len(batches) == len(loader) == 15  # counts stay equal: bad samples are stood in for
    bad = [r for r in caplog.records if "truncated" in r.getMessage()]
    # the size check condemns the whole shard, also the samples whose bytes are still there
    assert 10 <= len(bad) <= 12 and all("part-003.tar" in r.getMessage() for r in bad)
    assert all("index.json records" in r.getMessage() for r in bad)
    with pytest.raises(DataError, match=r"part-003\.tar: 1 of this worker's 30 samples are corrupt"):
        epoch(LatentLoader(cfg(root, max_bad_fraction=0.0)))


def test_s3_loader_matches_local(dataset, s3_bucket: str) -> None:  # noqa: ANN001
    root, _ = dataset
    remote = f"{s3_bucket}/ds"
    make_dataset(remote)  # same seed: the same shards
    local = epoch(LatentLoader(cfg(root, num_workers=2)))
    s3 = epoch(LatentLoader(cfg(remote, num_workers=2)))
    assert positions(s3) == positions(local)
    assert all(torch.equal(x["latents"], y["latents"]) for x, y in zip(s3, local))


def test_explicit_shard_lists(dataset) -> None:  # noqa: ANN001
    root, _ = dataset
    by_index = epoch(LatentLoader(cfg(root)))
    pattern = f"{root}/shards/part-{{000..005}}.tar"
    listed = ",".join(f"{root}/shards/part-{i:03d}.tar" for i in range(6))
    for source in (pattern, listed, f"{root}/index.json"):
        other = epoch(LatentLoader(dataclasses.replace(cfg(root), source=source)))
        assert [b["keys"] for b in other] == [b["keys"] for b in by_index]


def test_text_embeddings_are_padded_and_masked(tmp_path: Path) -> None:
    root = str(tmp_path / "t")
    make_dataset(root, sizes=[6, 6], text=True)
    for batch in epoch(LatentLoader(cfg(root, batch_size=3))):
        text, mask = batch["text"], batch["text_mask"]
        assert text.shape[0] == 3 and text.shape[2] == 8 and mask.shape == text.shape[:2]
        assert mask.any(dim=1).all() and not text[~mask].any()


def test_errors_name_the_problem(dataset, tmp_path: Path) -> None:  # noqa: ANN001
    root, _ = dataset
    with pytest.raises(DataError, match="no dataset index"):
        LatentLoader(cfg(str(tmp_path / "nothing")))
    with pytest.raises(DataError, match="cannot fill one batch"):
        LatentLoader(cfg(root, batch_size=16), 0, 2)
    loader = LatentLoader(cfg(root))
    state = loader.state_dict()
    other = str(tmp_path / "other")
    make_dataset(other, sizes=[4, 4])
    with pytest.raises(DataError, match="not the same data"):
        LatentLoader(cfg(other)).load_state_dict(state)
    with pytest.raises(ValueError, match="crop"):
        cfg(root, crop="center")


# ----------------------------------------------------------------------------- integrity and failures


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_bytes_fail_their_checksum_and_the_shard_is_named(dataset, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    root, clips = dataset
    index = json.loads(Path(root, "index.json").read_text())
    shard = next(s for s in index["shards"] if s["path"].endswith("part-003.tar"))
    key = shard["keys"][4]
    # a byte of sample 4's latent values (past its tar header and the .npy header): still a valid tar and .npy
    _flip_byte(Path(root, shard["path"]), shard["offsets"][4] + 512 + 128 + 10)
    whole = {"crop": "whole", "max_bad_fraction": 0.5}
    with caplog.at_level(logging.WARNING, logger="vidgpt.data"):
        batches = epoch(LatentLoader(cfg(root, **whole)))
    bad = [r.getMessage() for r in caplog.records if "checksum mismatch" in r.getMessage()]
    assert len(bad) == 1 and "part-003.tar sample 4" in bad[0]
    assert len(batches) == 15 and key not in [k for b in batches for k in b["keys"]]  # stood in for
    with pytest.raises(DataError, match=r"part-003\.tar: 1 of this worker's 30 samples are corrupt"):
        epoch(LatentLoader(cfg(root, crop="whole", max_bad_fraction=0.0)))
    # an index without checksums (as before they existed): the same bytes reach training unnoticed
    for s in index["shards"]:
        s.pop("crc32")
    Path(root, "index.json").write_text(json.dumps(index))
    batches = epoch(LatentLoader(cfg(root, crop="whole", max_bad_fraction=0.0)))
    (row,) = [(b, i) for b in batches for i, k in enumerate(b["keys"]) if k == key]
    assert not np.array_equal(row[0]["latents"][row[1]].numpy(), clips[key][:4])


def test_shard_deleted_mid_epoch_stops_with_one_line(dataset) -> None:  # noqa: ANN001
    root, _ = dataset
    batches = iter(LatentLoader(cfg(root, shuffle_buffer=2, read_ahead=0)))
    next(batches)
    for name in ("part-001.tar", "part-003.tar", "part-004.tar"):
        Path(root, "shards", name).unlink()
    with pytest.raises(DataError, match=r"part-00[134]\.tar: no such file: a shard listed in the dataset index is gone"):
        for _ in batches:
            pass


def test_unreachable_s3_is_a_network_error_never_replaced_by_other_samples(
    s3_server: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    proc, url = start_moto_server()  # a server of its own, to stop mid-epoch
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("VIDGPT_S3_MAX_ATTEMPTS", "1")
        storage.s3_client().create_bucket(Bucket="net")
        make_dataset("s3://net/ds")
        loader = LatentLoader(cfg("s3://net/ds", shuffle_buffer=2, read_ahead=0, read_retries=2, retry_backoff_s=0.05))
        batches = iter(loader)
        next(batches)
        proc.kill()
        proc.wait()
        with caplog.at_level(logging.WARNING, logger="vidgpt.data"):
            with pytest.raises(DataError, match=r"reading failed 3 times, giving up \(a network or storage failure"):
                for _ in batches:
                    pass
        messages = [r.getMessage() for r in caplog.records]
        assert not [m for m in messages if "skipping a bad sample" in m]
        assert sum("(attempt 2 of 3), retrying in" in m for m in messages) >= 1  # retried before giving up
    finally:
        proc.kill()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An S3 endpoint on 127.0.0.1 that accepts connections (the kernel's backlog) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


def test_an_s3_endpoint_that_never_answers_is_said_then_given_up(
    silent_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in (("AWS_ENDPOINT_URL", silent_endpoint), ("AWS_ACCESS_KEY_ID", "x"),
                        ("AWS_SECRET_ACCESS_KEY", "x"), ("VIDGPT_S3_READ_TIMEOUT", "1"),
                        ("VIDGPT_S3_MAX_ATTEMPTS", "2"), ("VIDGPT_S3_SLOW_S", "0.5")):
        monkeypatch.setenv(name, value)
    start = time.monotonic()
    with pytest.raises(storage.StorageError) as exc:
        storage.read_bytes("s3://bucket/index.json")
    assert time.monotonic() - start < 30
    assert f"the S3 endpoint {silent_endpoint} did not answer in time, 2 attempts" in str(exc.value)
    err = capsys.readouterr().err
    assert err.count(f"s3://bucket/index.json: no answer from the S3 endpoint {silent_endpoint} for 0.5 s") == 1
    monkeypatch.setenv("VIDGPT_S3_READ_TIMEOUT", "soon")
    with pytest.raises(storage.StorageError, match="VIDGPT_S3_READ_TIMEOUT='soon': must be a number > 0"):
        storage.read_bytes("s3://bucket/other.json")


def test_an_endpoint_stalled_mid_epoch_is_said_retried_then_stops(
    s3_server: str, silent_endpoint: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture
) -> None:
    """The loader reads from a live endpoint, which then stops answering (here: the same location served by
    a socket that never answers): a line says so within VIDGPT_S3_SLOW_S, the loader retries, then stops
    with a network error; nothing hangs."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("VIDGPT_S3_MAX_ATTEMPTS", "1")
    storage.s3_client().create_bucket(Bucket="stall")
    make_dataset("s3://stall/ds")
    loader = LatentLoader(cfg("s3://stall/ds", shuffle_buffer=2, read_ahead=0, read_retries=1, retry_backoff_s=0.05))
    batches = iter(loader)
    next(batches)
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_endpoint)
    monkeypatch.setenv("VIDGPT_S3_READ_TIMEOUT", "1")
    monkeypatch.setenv("VIDGPT_S3_SLOW_S", "0.5")
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="vidgpt.data"):
        with pytest.raises(DataError, match=r"reading failed 2 times, giving up \(a network or storage failure"):
            for _ in batches:
                pass
    assert time.monotonic() - start < 60
    assert "no answer from the S3 endpoint" in capsys.readouterr().err


def test_held_out_shards_are_never_trained_on(dataset) -> None:  # noqa: ANN001
    root, _ = dataset
    table = load_table(root)
    train, held = table.split(2)  # the last two shards: part-004 (5 clips) and part-005 (2 clips)
    assert [Path(u).name for u in held.uris] == ["part-004.tar", "part-005.tar"] and sum(held.sizes) == 7
    seen = {k for b in epoch(LatentLoader(cfg(root, batch_size=1), table=train)) for k in b["keys"]}
    assert len(seen) == 23 and not any(k.startswith(("s4-", "s5-")) for k in seen)
    held_keys = {k for b in epoch(LatentLoader(cfg(root, batch_size=1), table=held)) for k in b["keys"]}
    assert held_keys == {f"s4-{i}" for i in range(5)} | {"s5-0", "s5-1"}
    assert train.fingerprint() != table.fingerprint()
    with pytest.raises(DataError, match="cannot hold out 6 of 6 shards"):
        table.split(6)


def test_an_error_from_a_dataloader_worker_is_one_line() -> None:
    """torch re-raises a worker's exception with the worker's whole traceback in its message."""
    try:
        raise DataError("s3://b/shards/x.tar: no such object: a shard listed in the dataset index is gone")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as exc:
        wrapped.reraise()
    assert "Traceback" in str(exc.value)  # what a plain print would show
    assert error_line(exc.value) == "s3://b/shards/x.tar: no such object: a shard listed in the dataset index is gone"
    assert error_line(DataError("plain: message")) == "plain: message"
