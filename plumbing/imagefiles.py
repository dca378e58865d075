"""Image files on disk -> uint8 tensors: one file (read_image, read_jpeg_bytes for the device's decoder), a batch of
images of different sizes padded into one tensor (pad_images), files decoded on the device (decode_jpegs), and
ImageFiles / file_loader: DataLoader workers that only read or decode files and hand over padded batches; the device
crops them (augment.py). plumbing.data builds them. Every image, whatever its mode, becomes uint8 RGB (3, H, W)."""
import atexit
import functools
import io
import math
import multiprocessing
import os
import re
import signal
import time
from typing import Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

from plumbing.errors import UserError

Tensor = torch.Tensor
UNREADABLE = (OSError, ValueError, SyntaxError, RuntimeError)  # what a truncated, corrupt or non-image file raises


def read_image(path: str, max_side: int = 0) -> Tensor:
    """An image file -> uint8 (3, H, W) RGB (decode_bytes), shrunk to max_side (0: as is). Corrupt: an error."""
    return shrink(decode_bytes(torchvision.io.read_file(path), path), max_side)


def decode_bytes(data: Tensor, path: str = "") -> Tensor:
    """A file's bytes (uint8 1-D) -> uint8 (3, H, W) RGB, whatever the image's mode: torchvision's decoders (JPEG, PNG,
    WebP, GIF; faster than PIL's: benchmark.py --part data) in their RGB mode, as ImageReadMode.RGB converts grayscale,
    palette, grayscale + alpha, RGBA and CMYK; PIL for other formats (TIFF, BMP, an animated WebP...: pil_image). An
    animation: its first frame; 16 bits per sample: scaled to 8 (eight_bits). `path` (optional) names it in PIL's
    errors. Corrupt or not an image: an error of UNREADABLE."""
    try:
        x = torchvision.io.decode_image(data, mode=torchvision.io.ImageReadMode.RGB)
    except RuntimeError:  # a format torchvision does not decode; a corrupt file raises OSError in PIL
        x = pil_image(path or io.BytesIO(data.numpy()))
    if x.ndim == 4:  # torchvision decodes every frame of an animated GIF: (frames, 3, H, W)
        x = x[0]
    return eight_bits(x)


def pil_image(file) -> Tensor:
    """A path or file object read by PIL -> (3, H, W) RGB, its first frame, as convert("RGB") gives it (a 16-bit RGB
    TIFF: the high byte of each sample, within one level of eight_bits), except unsigned 16-bit grayscale (which
    convert clips at 255): uint16, for eight_bits. Signed, 32-bit integer and floating-point images (PIL modes "I;16S",
    "I", "F"...) have no one scaling to 8 bits: a ValueError."""
    from PIL import Image
    with Image.open(file) as image:
        if image.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
            gray = np.asarray(image).astype(np.uint16)  # in native byte order ("I;16B" is big-endian)
            return torch.from_numpy(gray).expand(3, -1, -1)
        if image.mode.startswith(("I", "F")):
            raise ValueError(f"a grayscale image of integers or floats (PIL mode {image.mode}), which have no "
                             "standard scaling to 8 bits: save it with 8 or 16 bits (unsigned)")
        return torchvision.transforms.functional.pil_to_tensor(image.convert("RGB"))


def eight_bits(x: Tensor) -> Tensor:
    """16-bit samples (uint16) -> uint8 round(v * 255 / 65535), rounded to the nearest level (v * 255 / 65535 = v / 257
    is never halfway between two integers: no tie to break); uint8 as it is."""
    if x.dtype != torch.uint16:
        return x
    return ((x.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)


def read_jpeg_bytes(path: str) -> Tensor:
    """A file's bytes as a uint8 1-D tensor for the device to decode (--decode gpu); a JPEG's up to the end of its
    first complete image (jpeg_end: a motion photo's video or other data after it is left out). A truncated JPEG is an
    error here: nvJPEG decoded one without an error on an H100 (torch 2.11, 2026-12-06) where torchvision's CPU decoder
    raises, so the workers catch it, for both devices."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    if data[:2] == b"\xff\xd8":
        end = jpeg_end(data)
        if end < 0:
            raise ValueError(f"{path}: truncated JPEG (its data ends before the end-of-image marker)")
        del data[end:]
    return torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


# the next marker in JPEG bytes: 0xFF and a code other than 0x00 (a 0xFF byte of entropy-coded data, stuffed), RST0-7
# (restart markers, inside a scan's data) and 0xFF (fill bytes before a marker)
JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_end(data) -> int:
    """Where the first complete image of JPEG bytes ends (the offset after its end-of-image marker, EOI), or -1 if the
    bytes end first: truncated. Walks the marker segments from the start of image (SOI): a segment is skipped by its
    length (so an APPn segment's EXIF thumbnail, a JPEG itself, is never read as markers), a start of scan (SOS) is
    followed by entropy-coded data up to the next marker that is not a restart marker, and SOI and TEM have no length.
    Bytes between segments (fill, garbage) are skipped up to the next marker, as libjpeg does."""
    pos = 2
    while True:
        marker = JPEG_MARKER.search(data, pos)
        if marker is None:
            return -1
        code = data[marker.start() + 1]
        pos = marker.end()
        if code == 0xD9:
            return pos
        if code not in (0x01, 0xD8):  # a segment: its 2-byte length counts itself, not the marker
            pos += int.from_bytes(data[pos:pos + 2], "big")


def shrink(x: Tensor, max_side: int) -> Tensor:
    """uint8 image (3, H, W) with its longer side shrunk to max_side (antialiased bilinear); unchanged if it fits or
    max_side is 0."""
    f = max_side / max(x.shape[1:])
    if f >= 1 or not max_side:
        return x
    size = [max(1, round(d * f)) for d in x.shape[1:]]
    y = F.interpolate(x[None].float(), size=size, mode="bilinear", antialias=True)[0]
    return y.round_().clamp_(0, 255).to(torch.uint8)


def pad_images(images: Sequence[Tensor], storage=None) -> Tuple[Tensor, Tensor]:
    """uint8 images (3, H_i, W_i) -> one zero-padded uint8 batch (B, 3, max H, max W) and their sizes (B, 2), long:
    Augment's input for images of different sizes. Channels-last memory (B, H, W, 3), as decoders write pixels: whole
    rows are copied; in a DataLoader worker, straight into shared memory (as its default collate does), or into
    `storage(nbytes)`: a shared storage of at least that size that the worker reuses (ImageFiles)."""
    hw = torch.tensor([x.shape[1:] for x in images], dtype=torch.long)
    shape, dev = (len(images), *hw.amax(0).tolist(), 3), images[0].device
    shared = dev.type == "cpu" and torch.utils.data.get_worker_info() is not None
    st = (storage or torch.UntypedStorage._new_shared)(math.prod(shape)) if shared else None
    out = (torch.empty(0, dtype=torch.uint8).new(st)[:math.prod(shape)].view(shape) if shared else
           torch.empty(shape, dtype=torch.uint8, device=dev))
    for o, x in zip(out, images):  # the padding is zeroed only where an image leaves some (a reused buffer is dirty)
        (h, w), (H, W) = x.shape[1:], o.shape[:2]
        o[:h, :w] = x.permute(1, 2, 0)
        if h < H:
            o[h:].zero_()
        if w < W:
            o[:h, w:].zero_()
    return out.permute(0, 3, 1, 2), hw.to(dev, non_blocking=True)


def decode_jpegs(blobs: Sequence[Tensor], device, max_side: int):
    """Files' bytes (uint8 1-D tensors) -> (pad_images of the images decoded on `device`, src, decoded). One batched
    torchvision decode_jpeg (nvJPEG on a GPU); a file it cannot decode is tried with decode_bytes on the CPU (PNG,
    16-bit, TIFF...: uint8 RGB), and one that no decoder reads is replaced by the next decoded image of the batch: image
    i is file src[i], decoded[i] = False. Images are shrunk to max_side (shrink) before padding."""
    rgb = torchvision.io.ImageReadMode.RGB
    try:
        imgs = torchvision.io.decode_jpeg(list(blobs), mode=rgb, device=device)
    except RuntimeError:  # a file of the batch does not decode: one at a time
        imgs = []
        for b in blobs:
            try:
                imgs.append(torchvision.io.decode_jpeg(b, mode=rgb, device=device))
            except RuntimeError:
                try:
                    imgs.append(decode_bytes(b).to(device))
                except UNREADABLE:
                    imgs.append(None)
    n, ok = len(imgs), [im is not None for im in imgs]
    src = [next((j % n for j in range(i, i + n) if ok[j % n]), i) for i in range(n)]
    blank = torch.zeros(3, 1, 1, dtype=torch.uint8, device=device)  # no file of the batch decodes
    return pad_images([blank if imgs[j] is None else shrink(imgs[j], max_side) for j in src]), src, ok


# ---- image files: DataLoader workers read or decode, the device crops
LARGE_MAX = 512  # a large image's longer side is shrunk to this before padding (bounded batch memory)


def quiet_worker(_):  # DataLoader workers leave SIGINT / SIGTERM to the main process, which saves and stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _keep_freed_memory()


def _keep_freed_memory():
    """glibc's malloc in a worker: keep freed memory for the next batch (no trimming, decoded images on the heap)
    instead of handing it back to the OS and page-faulting it in again for every image (~0.5 ms per 500x375 image:
    benchmark.py --part data). The worker's memory stays at its largest batch. Other C libraries: left as they are."""
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: 1 GiB
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: 32 MiB
    except (OSError, AttributeError):
        pass


RING = 4  # padded batches a worker writes in turn, reusing their shared memory (it prefetches 2, the loop holds 1)
MAX_WORKERS = 256
_USE_COUNT = getattr(torch._C, "_storage_Use_Count", None)  # references to a storage (its tensors, views, wrappers)


class ImageFiles(torch.utils.data.Dataset):
    """Image files (paths, labels) read by DataLoader workers: "bytes" (the device decodes them), "decode" (read_image:
    uint8 (3, H, W), longer side <= LARGE_MAX), "small" (resized whole) or "eval" (resize + center crop). An unreadable
    file (UNREADABLE) is replaced by the next readable one ("small": not), and `ok` = False tells the main process; any
    other exception while reading a file is a ReadFailure naming it (FileLoader: one line).

    "decode": a worker pads its batches into RING shared-memory buffers in turn instead of a new one each batch: the
    first write to fresh memory (page faults) costs a third as much as decoding (benchmark.py --part data). Its
    k-th batch reuses buffer k % RING once the main process holds no tensor of its batches before k - RING + 1
    (`taken`, in shared memory, written by `received`: the main process counts the references to each batch's memory,
    or copies it when torch cannot count them; with CUDA the pin-memory thread copies every batch anyway). A worker
    that finds no free buffer after 20 ms, or whose main process never calls `received`, takes a new one (`fresh`
    counts them): a buffer that the main process may still read is never written."""

    def __init__(self, files, size: int, mode: str):
        self.paths, self.labels = files
        self.size = size
        self.mode = mode
        self.taken = None  # "decode": per worker, the first of its batches the main process may still hold
        self.fresh = None  # "decode": how many buffers the workers took new instead of reusing one
        if mode == "decode":
            self.taken = torch.zeros(MAX_WORKERS, dtype=torch.long).share_memory_()
            self.fresh = torch.zeros(1, dtype=torch.long).share_memory_()
        self.ring = [None] * RING  # in a worker: its buffers
        self.made = 0  # in a worker: the batches it has made
        self.held = {}  # in the main process: {worker: [(storage, batch number)]} of batches still in use

    def _buffer(self, w: int, k: int, nbytes: int):  # in worker w: the shared storage for its k-th batch
        t = time.monotonic()
        while self.taken[w] < k - RING + 1 and time.monotonic() - t < 0.02:
            time.sleep(0.0005)
        st = self.ring[k % RING]
        if self.taken[w] < k - RING + 1 or st is None or st.nbytes() < nbytes:  # not free, or too small
            st = self.ring[k % RING] = torch.UntypedStorage._new_shared(max(nbytes, st.nbytes() if st else 0))
            self.fresh += 1
        return st

    def received(self, batch):  # in the main process: ((x, hw, ticket), y, idx, ok) -> ((x, hw), y, idx, ok)
        if self.mode != "decode":
            return batch
        (x, hw, (w, k)), *rest = batch
        w, k = int(w), int(k)
        if w < 0:  # collated in the main process (no workers): not shared
            return ((x, hw), *rest)
        if x.is_pinned() or _USE_COUNT is None:  # a copy (the pin-memory thread's, or ours): the buffer is free
            x = x if x.is_pinned() else x.clone()
            self.taken[w] = max(int(self.taken[w]), k + 1)
            return ((x, hw), *rest)
        held = [(st, j) for st, j in self.held.get(w, []) if _USE_COUNT(st._cdata) > 1] + [(x.untyped_storage(), k)]
        self.held[w] = held  # batches of worker w that something in this process still uses (this one included)
        self.taken[w] = min(j for _, j in held)
        return ((x, hw), *rest)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        import torchvision.transforms.v2.functional as TF
        for j in [i] if self.mode == "small" else [(i + k) % len(self) for k in range(10)]:
            path = os.fsdecode(self.paths[j])
            try:
                x = (read_jpeg_bytes(path) if self.mode == "bytes" else
                     read_image(path, LARGE_MAX if self.mode == "decode" else 0))
            except UNREADABLE:  # truncated, corrupt or not an image
                continue
            except Exception as e:  # unforeseen (a decoder's bug, ours): the run ends naming the file (FileLoader)
                raise ReadFailure(f"reading {path} failed: {type(e).__name__}: {' '.join(str(e).split())}") from e
            x = (x if self.mode in ("bytes", "decode") else TF.resize(x, [self.size] * 2) if self.mode == "small" else
                 TF.center_crop(TF.resize(x, round(self.size * 8 / 7)), self.size))
            return x, int(self.labels[j]), i, j == i
        return torch.zeros(3, self.size or 1, self.size or 1, dtype=torch.uint8), -1, i, False

    def collate(self, batch):  # in the worker: one padded batch ("decode"); all bytes in one tensor + lengths ("bytes")
        x, y, idx, ok = zip(*batch)
        if self.mode == "decode":  # ticket (worker, its batch number); (-1, -1) from the main process
            info = torch.utils.data.get_worker_info()
            w, k = (info.id % MAX_WORKERS, self.made) if info else (-1, -1)
            self.made += 1
            x = (*pad_images(x, functools.partial(self._buffer, w, k) if info else None), torch.tensor([w, k]))
        else:
            x = (torch.utils.data.default_collate(x) if self.mode != "bytes" else
                 (torch.cat([b.view(-1) for b in x]), torch.tensor([b.numel() for b in x])))
        return x, torch.tensor(y), torch.tensor(idx), torch.tensor(ok)


class ReadFailure(Exception):
    """A file that a worker failed to read with an exception outside UNREADABLE: one line, naming the file."""


class FileLoader(torch.utils.data.DataLoader):
    """A DataLoader whose worker's ReadFailure, which DataLoader re-raises here with the worker's traceback as its
    message, ends the run in one line (a UserError): what the user acts on is the file. Any other exception of a worker
    (a bug in this module) keeps its traceback; end_workers makes sure that the process then exits."""

    def __iter__(self):
        try:
            yield from super().__iter__()
        except ReadFailure as e:
            failed = str(e).strip().splitlines()[-1].split("ReadFailure: ", 1)[-1]  # the worker's exception: last line
            raise UserError(f"{failed}; remove or replace the file.") from None


def file_loader(dataset, batch_sampler, workers: int, persistent: bool = False):
    """A FileLoader of `dataset`'s batches (each worker prefetches 2), its workers set up by quiet_worker."""
    if getattr(dataset, "taken", None) is not None:
        dataset.taken.zero_()  # new workers count from 0
    return FileLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, persistent_workers=persistent,
                      collate_fn=dataset.collate, pin_memory=torch.cuda.is_available(), worker_init_fn=quiet_worker)


def end_workers():
    """At exit: DataLoader workers still running are killed. Their loader is still alive when an exception stopped
    the loop (its traceback holds the iterator), and multiprocessing's exit handler would send them SIGTERM, which they
    ignore (quiet_worker), then wait for them forever. Registered when this module is imported: after multiprocessing's
    handler, so it runs before it, and before data.py's graceful shutdown of persistent workers, so it runs after it
    (atexit runs the last registered first)."""
    workers = [process for process in multiprocessing.active_children() if process.daemon]
    if workers:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would raise for each killed worker
    for process in workers:
        process.kill()
        process.join()


atexit.register(end_workers)


