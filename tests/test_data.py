"""Data loading from real on-disk formats: image folders small and large, MedMNIST, the synthetic set, batches."""
import contextlib
import dataclasses
import math
import struct
import zlib
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


# ------------------------------------------------------------------------------- images of every mode: uint8 RGB
def _png16(path, pixels):
    """A 16-bit PNG of uint16 pixels (H, W) grayscale or (H, W, 3) RGB, written by hand: PIL writes 16-bit gray only."""
    h, w = pixels.shape[:2]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)  # filter 0 (none) before each row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, 0 if pixels.ndim == 2 else 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) +
                     chunk(b"IEND", b""))


def _tiff16_rgb(path, pixels):
    """An uncompressed 16-bit RGB TIFF of uint16 pixels (H, W, 3), written by hand: PIL does not write one."""
    h, w = pixels.shape[:2]
    bits_at = 8 + 2 + 9 * 12 + 4  # after the header and the IFD of 9 entries
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, bits_at), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, bits_at + 6), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, pixels.size * 2)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *tag) for tag in tags) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<3H", 16, 16, 16) +
                     pixels.astype("<u2").tobytes())


def _every_mode(folder, h, w):
    """Files of every mode that an ImageFolder lists, and what each must become, uint8 (H, W, 3): PIL's
    convert("RGB") (an animation's first frame), or for 16 bits per sample round(v * 255 / 65535)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    want = {}
    for name, shape in (("gray16.png", (h, w)), ("rgb16.png", (h, w, 3)), ("rgb16.tif", (h, w, 3)),
                        ("gray16.tif", (h, w))):
        pixels = rng.integers(0, 65536, shape, dtype=np.uint16)
        if name == "gray16.tif":
            Image.fromarray(pixels).save(folder / name)  # PIL mode I;16
        elif name.endswith(".tif"):
            _tiff16_rgb(folder / name, pixels)
        else:
            _png16(folder / name, pixels)
        scaled = np.round(pixels * (255 / 65535)).astype(np.uint8)
        want[name] = np.repeat(scaled[..., None], 3, -1) if scaled.ndim == 2 else scaled
    rgb = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for _ in range(3)]
    rgb[0].convert("P").save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 256, (h, w, 2), dtype=np.uint8), "LA").save(folder / "gray_alpha.png")
    Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "CMYK").save(folder / "cmyk.jpg")
    rgb[1].save(folder / "rgb8.tif")
    rgb[1].convert("L").save(folder / "gray8.tif")
    rgb[0].save(folder / "animated.webp", save_all=True, append_images=rgb[1:], lossless=True)
    for name in ("palette.png", "gray_alpha.png", "rgba.png", "cmyk.jpg", "rgb8.tif", "gray8.tif", "animated.webp"):
        with Image.open(folder / name) as image:
            want[name] = np.array(image.convert("RGB"))
    return want


def _as_hwc(x):
    return x.permute(1, 2, 0).numpy().astype(np.int64)


@pytest.mark.parametrize("path", ["small", "large", "large-bytes"])
def test_images_of_every_mode_become_uint8_rgb_in_both_image_paths(tmp_path, capsys, path):
    """16-bit PNGs (grayscale, RGB) and TIFFs (RGB, grayscale), palette, grayscale + alpha, RGBA, CMYK JPEG, 8-bit TIFFs
    and an animated WebP among an ImageFolder's files: uint8 RGB within one grey level of PIL's conversion (16 bits:
    of round(v * 255 / 65535)), decoded once (small images) or by the workers (large: --decode cpu; --decode gpu with
    the CPU decoding). 16-bit samples used to wrap around (large) or break the small-image workers (issue 30)."""
    h, w = (24, 24) if path == "small" else (100, 130)
    want = _every_mode(tmp_path / "train" / "odd", h, w)
    _every_mode(tmp_path / "val" / "odd", h, w)
    decode = "gpu" if path == "large-bytes" else "cpu"
    d = data.load_data("imagefolder", str(tmp_path), 0, "cpu", workers=1, decode=decode)
    names = [Path(p).name for p, _ in torchvision.datasets.ImageFolder(str(tmp_path / "train")).samples]
    seen = {}
    if path == "small":
        images = d.splits["ssl"][0]
        assert not d.large and images.dtype == torch.uint8 and images.shape == (len(want), 3, h, w)
        seen = {names[i]: _as_hwc(images[i]) for i in range(len(names))}
    else:
        assert d.large
        for (x, hw), _, idx in d.ssl_batches(len(want), 0, 0):  # one batch of them all
            assert x.dtype == torch.uint8 and torch.equal(hw, torch.tensor([[h, w]] * len(want)))
            seen.update({names[i]: _as_hwc(x[k]) for k, i in enumerate(idx.tolist())})
        assert d.unreadable == 0 and "unreadable" not in capsys.readouterr().err
    assert sorted(seen) == sorted(want)
    for name, got in seen.items():
        assert np.abs(got - want[name]).max() <= 1, name


def test_an_animated_gif_is_its_first_frame_and_a_float_tiff_is_refused_in_one_line(tmp_path):
    """An animated GIF (torchvision decodes every frame; not an ImageFolder extension, read alone): its first frame,
    by both readers. A 32-bit floating-point TIFF has no one scaling to 8 bits: its folder is refused in one line
    that names the file and why."""
    rng = np.random.default_rng(2)
    frames = [Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / "animated.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "animated.gif") as image:
        want = np.array(image.convert("RGB"))
    x = imagefiles.read_image(str(tmp_path / "animated.gif"))
    (xb, _), _, ok = imagefiles.decode_jpegs([imagefiles.read_jpeg_bytes(str(tmp_path / "animated.gif"))], "cpu", 512)
    assert x.shape == (3, 20, 30) and np.array_equal(_as_hwc(x), want) and torch.equal(xb[0], x) and ok == [True]
    _write_folder(tmp_path / "data", 32)
    Image.fromarray(rng.random((32, 32), dtype=np.float32)).save(tmp_path / "data" / "train" / "dog" / "float.tif")
    with pytest.raises(UserError) as e:
        data.load_data("imagefolder", str(tmp_path / "data"), 0, "cpu", workers=1)
    assert "\n" not in str(e.value) and "dog/float.tif" in str(e.value) and "mode F" in str(e.value), e.value


@pytest.mark.parametrize("dtype", ["uint16", "float32", "int64"])
def test_medmnist_uint16_images_are_scaled_to_8_bits_and_other_dtypes_are_one_line(tmp_path, dtype):
    rng = np.random.default_rng(0)
    path, labels = tmp_path / "odd.npz", rng.integers(0, 8, (20, 1))
    images = rng.integers(0, 65536 if dtype == "uint16" else 256, (20, 28, 28), dtype=np.int64).astype(dtype)
    np.savez(path, train_images=images, train_labels=labels, test_images=images, test_labels=labels)
    if dtype != "uint16":
        with pytest.raises(UserError, match=f"odd.npz: train_images are {dtype}; medmnist needs uint8") as e:
            data.load_data("medmnist", str(path), 0, "cpu")
        assert "\n" not in str(e.value)
        return
    x = data.load_data("medmnist", str(path), 0, "cpu").splits["ssl"][0]
    want = torch.from_numpy(np.round(images * (255 / 65535)).astype(np.uint8))
    assert x.dtype == torch.uint8 and x.shape == (20, 3, 28, 28) and torch.equal(x, want[:, None].expand(-1, 3, -1, -1))


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
