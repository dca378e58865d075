"""Data loading from real on-disk formats: image folders small and large, MedMNIST, the synthetic set, batches."""
import contextlib
import dataclasses
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image

from plumbing import data, imagefiles
from plumbing.errors import UserError


def test_synthetic_is_seeded_and_balanced():
    x1, y1 = data.make_synthetic(200, 3)
    x2, y2 = data.make_synthetic(200, 3)
    x3, _ = data.make_synthetic(200, 4)
    assert x1.dtype == torch.uint8 and x1.shape == (200, 3, 32, 32)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.bincount(y1).tolist() == [20] * 10


def _write_folder(root, size, n_per_class=6, classes=("cat", "dog"), split="val", fmt="png"):
    rng = np.random.default_rng(0)
    for s, n in (("train", n_per_class), (split, 2)):
        for c in classes:
            (root / s / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / s / c / f"{i}.{fmt}")


def test_imagefolder_small_images_are_decoded_once(tmp_path):
    _write_folder(tmp_path, 32)
    d = data.load_data("imagefolder", str(tmp_path), 0, "cpu")
    (x_all, y_all), (test, _) = d.splits["ssl"], d.splits["test"]
    assert not d.large and x_all.shape == (12, 3, 32, 32) and x_all.dtype == torch.uint8
    assert d.num_classes == 2 and test.shape[0] == 4 and sorted(y_all.tolist()) == [0] * 6 + [1] * 6
    first = Image.open(tmp_path / "train" / "cat" / "0.png")
    assert torch.equal(x_all[0], torch.from_numpy(np.array(first)).permute(2, 0, 1))
    x, y, idx = next(d.ssl_batches(4, 0, 0))
    assert x.shape == (4, 3, 32, 32) and torch.equal(x_all[idx], x) and torch.equal(y_all[idx], y)


def test_batches_are_seeded_resumable_and_shared_out_by_rank(monkeypatch):
    d = data.load_data("synthetic", "", 0, "cpu")
    epoch = [idx for _, _, idx in d.ssl_batches(512, 3, 7)]
    assert len(epoch) == 8 and torch.equal(torch.cat(epoch).sort().values, torch.arange(4096))  # a permutation
    assert all(torch.equal(a, b) for a, b in zip(epoch, [i for _, _, i in d.ssl_batches(512, 3, 7)]))  # seeded
    assert not torch.equal(epoch[0], next(d.ssl_batches(512, 4, 7))[2])  # a new order each epoch
    assert all(torch.equal(a, b) for a, b in zip(epoch[5:], [i for _, _, i in d.ssl_batches(512, 3, 7, start=5)]))
    for r in range(4):  # rank r of 4 takes the r-th quarter of every global batch
        monkeypatch.setattr(data, "rank", lambda: r)
        monkeypatch.setattr(data, "world_size", lambda: 4)
        shares = [i for _, _, i in d.ssl_batches(512, 3, 7)]
        assert all(torch.equal(s, e[128 * r:128 * (r + 1)]) for s, e in zip(shares, epoch))


def _write_large(root, corrupt=True):
    """ImageNet-sized JPEGs (375 x 500 and 500 x 333), 2 classes; train/dog/1.jpg truncated if `corrupt`."""
    rng = np.random.default_rng(0)
    for s, n in (("train", 6), ("val", 2)):
        for c in ("cat", "dog"):
            (root / s / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 255, (375, 500, 3) if i % 2 else (500, 333, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / s / c / f"{i}.jpg")
    if corrupt:
        data = (root / "train" / "dog" / "1.jpg").read_bytes()
        (root / "train" / "dog" / "1.jpg").write_bytes(data[:len(data) // 3])
    return root


@pytest.mark.parametrize("decode", ["cpu", "gpu"])
def test_imagefolder_large_images_are_only_decoded_by_the_workers(tmp_path, capsys, decode):
    """Workers return decoded images (decode cpu) or the files' bytes (gpu: decoded by the device, here the CPU), padded
    into one batch with their sizes; the corrupt file is replaced by a readable one and counted, in both paths; the
    DataLoader and its workers persist across epochs; samples are numpy arrays."""
    d = data.load_data("imagefolder", str(_write_large(tmp_path)), 0, "cpu", workers=2, decode=decode)
    assert d.large and d.image_size == 224 and d.feed.persistent_workers and d.feed.num_workers == 2
    paths, labels = d.files["ssl"]
    assert isinstance(paths, np.ndarray) and paths.dtype.kind == "S" and labels.dtype == np.int64
    bad = [i for i, p in enumerate(paths) if p.endswith(b"dog/1.jpg")][0]
    seen = []
    for epoch in range(2):
        for (x, hw), y, idx in d.ssl_batches(4, epoch, 0):
            assert x.dtype == torch.uint8 and x.shape[:2] == (4, 3) and tuple(x.shape[2:]) == tuple(hw.amax(0).tolist())
            for k, i in enumerate(idx.tolist()):
                seen.append(i)
                h, w = hw[k].tolist()
                assert x[k, :, h:].sum() == 0 and x[k, :, :, w:].sum() == 0  # zero padding
                if i != bad:  # the image itself, as torchvision decodes it
                    ref = torchvision.io.decode_image(torchvision.io.read_file(paths[i].decode()))
                    assert torch.equal(x[k, :, :h, :w], ref) and y[k] == labels[i]
                else:  # another readable image in its place
                    assert (h, w) in ((375, 500), (500, 333)) and x[k].float().std() > 10
        assert d.feed._iterator is not None  # kept for the next epoch
        workers = d.feed._iterator._workers
    assert sorted(seen) == sorted(list(range(12)) * 2) and d.unreadable == 2
    full, resumed = list(d.ssl_batches(4, 1, 0)), list(d.ssl_batches(4, 1, 0, start=1))  # resume at batch 1
    assert all(torch.equal(a[0][0], b[0][0]) and torch.equal(a[2], b[2]) for a, b in zip(full[1:], resumed))
    assert d.feed._iterator._workers is workers  # the same worker processes in epoch 2
    assert capsys.readouterr().err.count("warning: unreadable image") == 4
    x, _ = next(d.eval_batches("test"))
    assert x.shape == (4, 3, 224, 224)


def test_decode_workers_reuse_their_shared_buffers_and_never_write_into_a_held_batch(tmp_path):
    """A worker pads its batches into RING shared buffers in turn (page faults of fresh memory cost a third of the
    decoding), reusing one only when the main process holds no tensor of it: a training loop lets it reuse them; a
    consumer that keeps every batch gets new ones, and its batches keep their pixels."""
    from plumbing.imagefiles import RING
    d = data.load_data("imagefolder", str(_write_large(tmp_path, corrupt=False)), 0, "cpu", workers=1)
    ds, paths = d.feed.dataset, d.files["ssl"][0]
    for epoch in range(4):  # 6 batches each, read and dropped, as a training step does
        for (x, hw), y, idx in d.ssl_batches(2, epoch, 0):
            assert x.float().mean() > 0
    assert 0 < ds.fresh.item() <= 2 * RING, ds.fresh  # the ring filled (and grown to a larger batch), then reused
    kept, before = list(d.ssl_batches(2, 4, 0)), ds.fresh.item()
    for _ in d.ssl_batches(2, 5, 0):  # another epoch while every batch of epoch 4 is still held
        pass
    assert ds.fresh.item() > before  # so the worker wrote into new buffers
    for (x, hw), y, idx in kept:
        for k, i in enumerate(idx.tolist()):
            h, w = hw[k].tolist()
            ref = torchvision.io.decode_image(torchvision.io.read_file(paths[i].decode()))
            assert torch.equal(x[k, :, :h, :w], ref)


def test_read_jpeg_bytes_refuses_a_truncated_jpeg_only(tmp_path):
    """--decode gpu's workers: a JPEG cut short raises (nvJPEG would decode it without an error); whole baseline and
    progressive JPEGs and other formats pass as their bytes."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    img.save(tmp_path / "a.jpg"), img.save(tmp_path / "p.jpg", progressive=True), img.save(tmp_path / "a.png")
    for name in ("a.jpg", "p.jpg", "a.png"):
        assert torch.equal(imagefiles.read_jpeg_bytes(str(tmp_path / name)), torchvision.io.read_file(str(tmp_path / name)))
    for name, cut in (("a.jpg", 2), ("p.jpg", 2), ("p.jpg", 4 / 3)):  # progressive: cut in its last scans too
        data = (tmp_path / name).read_bytes()
        (tmp_path / "cut.jpg").write_bytes(data[:int(len(data) / cut)])
        with pytest.raises(ValueError, match="truncated JPEG"):
            imagefiles.read_jpeg_bytes(str(tmp_path / "cut.jpg"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_jpegs_on_cuda_is_nvjpeg_close_to_the_cpu_decoder_and_replaces_a_bad_file(tmp_path):
    """--decode gpu on a GPU: one batched nvJPEG decode gives the CPU decoder's pixels up to the IDCT's rounding (mean
    absolute difference < 1 level of 255, max <= 16) on JPEGs without chroma subsampling (4:4:4); a file nvJPEG cannot
    decode is replaced by the next image of the batch. (With 4:2:0 chroma, nvJPEG's chroma upsampling differs from
    libjpeg-turbo's: on the first H100 run, random-noise 4:2:0 images differed by 10 levels on average, 117 at most.)"""
    rng, blobs = np.random.default_rng(0), []
    for i in range(6):
        h, w = (375, 500) if i % 2 else (500, 333)
        yy, xx = np.mgrid[:h, :w]
        img = np.stack([128 + 100 * np.sin(xx / (20 + 5 * i)), 128 + 100 * np.cos(yy / 30), (xx + yy) % 256], -1)
        img = (img + rng.integers(-8, 9, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i}.jpg", quality=90, subsampling=0)
        blobs.append(imagefiles.read_jpeg_bytes(str(tmp_path / f"{i}.jpg")))
    bad = 2
    not_a_jpeg = torch.full((999,), 7, dtype=torch.uint8)
    for blobs_, has_bad in ((blobs, False), (blobs[:bad] + [not_a_jpeg] + blobs[bad + 1:], True)):
        (x, hw), src, ok = imagefiles.decode_jpegs(blobs_, "cuda", imagefiles.LARGE_MAX)
        (xc, hwc), srcc, okc = imagefiles.decode_jpegs(blobs_, "cpu", imagefiles.LARGE_MAX)
        assert x.is_cuda and x.dtype == torch.uint8 and torch.equal(hw.cpu(), hwc.cpu()) and src == srcc
        d = (x.cpu().float() - xc.float()).abs()
        assert d.mean() < 1.0 and d.max() <= 16, (d.mean(), d.max())
        assert ok == okc and (not has_bad or (ok.count(False) == 1 and src[bad] != bad))


def test_large_images_are_shrunk_to_large_max_and_read_in_other_formats(tmp_path):
    Image.fromarray(np.full((600, 1500, 3), 200, dtype=np.uint8)).save(tmp_path / "big.bmp")  # not a torchvision format
    x = imagefiles.read_image(str(tmp_path / "big.bmp"), imagefiles.LARGE_MAX)
    assert x.shape == (3, round(600 * 512 / 1500), 512) and (x.float() - 200).abs().max() < 1


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "bloodmnist.npz"
    np.savez(path, train_images=rng.integers(0, 255, (20, 28, 28, 3), dtype=np.uint8), train_labels=rng.integers(0, 8, (20, 1)),
             test_images=rng.integers(0, 255, (6, 28, 28, 3), dtype=np.uint8), test_labels=rng.integers(0, 8, (6, 1)))
    d = data.load_data("medmnist", str(path), 0, "cpu")
    assert d.splits["ssl"][0].shape == (20, 3, 28, 28) and d.splits["test"][1].shape == (6,) and d.image_size == 28


@pytest.mark.parametrize("shape", [(20, 784), (20, 1, 28, 28, 3), (20, 28, 28, 2)], ids=["2-D", "5-D", "2 channels"])
def test_medmnist_images_of_another_shape_are_one_line(tmp_path, shape):
    path, labels = tmp_path / "odd.npz", np.zeros((20, 1), dtype=np.int64)
    np.savez(path, train_images=np.zeros(shape, np.uint8), train_labels=labels, test_images=np.zeros(shape, np.uint8),
             test_labels=labels)
    with pytest.raises(UserError, match=r"images \(N, H, W\) or \(N, H, W, 1 or 3\).*odd.npz is not one"):
        data.load_data("medmnist", str(path), 0, "cpu")


@pytest.mark.parametrize("name", ["imagefolder", "tinyimagenet", "medmnist"])
def test_missing_data_is_one_clear_line(tmp_path, name):
    with pytest.raises(UserError) as e:
        data.load_data(name, str(tmp_path / "nothing"), 0, "cpu")
    msg = str(e.value)
    assert "\n" not in msg and "nothing" in msg


# ------------------------------------------------------------------------ --decode gpu: a JPEG's end, by its markers
def _jpeg(path, seed=0, progressive=False, size=(40, 60)):
    img = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))
    img.save(path, progressive=progressive)
    return path.read_bytes()


def _with_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
    """The JPEG with an APP1 (EXIF) segment after its SOI holding a thumbnail JPEG, with its own SOS and EOI."""
    body = b"Exif\x00\x00" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def test_read_jpeg_bytes_keeps_a_whole_jpeg_followed_by_other_data_or_holding_a_thumbnail(tmp_path):
    """A motion photo (a video appended; its bytes hold FF DA and FF D9), a second JPEG appended, an EXIF thumbnail (a
    JPEG inside an APP1 segment): the first image's bytes up to its end-of-image marker, which the CPU decoder reads
    as the whole file. A search of the whole file for the last FF DA and FF D9 refused the motion photo (issue 30)."""
    video = b"\x00\x00\x00\x18ftypmp42" + b"\xff\xda\x00\x0c" * 8 + bytes(range(256)) * 4 + b"\xff\xd9\xff\xda" * 3
    for progressive in (False, True):
        jpeg = _jpeg(tmp_path / "a.jpg", progressive=progressive)
        thumbnail = _jpeg(tmp_path / "t.jpg", seed=1, size=(8, 12))
        inside = _with_thumbnail(jpeg, thumbnail)
        for name, blob in (("motion", jpeg + video), ("two", jpeg + thumbnail), ("thumbnail", inside),
                           ("thumbnail+motion", inside + video)):
            (tmp_path / f"{name}.jpg").write_bytes(blob)
            got = imagefiles.read_jpeg_bytes(str(tmp_path / f"{name}.jpg"))
            first = blob[:len(blob) - len(video)] if name.endswith("motion") else blob if name == "thumbnail" else jpeg
            assert bytes(got.numpy()) == first, (name, progressive)
            cpu = torchvision.io.decode_jpeg(torchvision.io.read_file(str(tmp_path / f"{name}.jpg")))
            assert torch.equal(torchvision.io.decode_jpeg(got), cpu)


def test_read_jpeg_bytes_refuses_a_jpeg_cut_anywhere(tmp_path):
    """Baseline and progressive JPEGs, with and without an EXIF thumbnail (whose own EOI comes before the image's
    scans), cut in their headers, in a scan, between scans or just before the end-of-image marker: truncated."""
    thumbnail = _jpeg(tmp_path / "t.jpg", seed=1, size=(8, 12))
    for progressive in (False, True):
        jpeg = _jpeg(tmp_path / "a.jpg", progressive=progressive)
        for blob in (jpeg, _with_thumbnail(jpeg, thumbnail)):
            for cut in (3, 100, len(blob) // 3, len(blob) // 2, len(blob) * 3 // 4, len(blob) - 2, len(blob) - 1):
                (tmp_path / "cut.jpg").write_bytes(blob[:cut])
                with pytest.raises(ValueError, match="truncated JPEG"):
                    imagefiles.read_jpeg_bytes(str(tmp_path / "cut.jpg"))
