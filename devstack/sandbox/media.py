"""The audio the sandbox serves: generated per recording, deterministic, sized like the real thing.

WAV is 16-bit PCM at 8 kHz (128 kbps a channel: about 58 MB for an hour of mono), a tone whose
pitch and loudness follow from the recording's sid; MP3 is MPEG-1 Layer III frame headers at
32 kbps with silent frames behind an ID3 tag naming the recording (nothing in the service decodes
MP3). Both are produced as a stream of chunks from a few precomputed blocks, so a 500 MB file is
never held in memory, and the same sid and duration always give the same bytes.
"""

from __future__ import annotations

import hashlib
import math
import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

SAMPLE_RATE = 8000
WAV_BYTES_PER_SECOND = SAMPLE_RATE * 2  # 16-bit mono: 128 kbps
MP3_FRAME = 144  # MPEG-1 Layer III, 32 kbps, 32 kHz: 144 * 32000 / 32000 bytes, 1152 samples
MP3_FRAMES_PER_SECOND = 32000 / 1152
CHUNK = 64 * 1024
CONTENT_TYPES = {"wav": "audio/x-wav", "mp3": "audio/mpeg"}


@dataclass(frozen=True)
class Media:
    content_type: str
    length: int
    _chunks: Iterator[bytes]

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks


def media(sid: str, seconds: int, channels: int = 1, fmt: str = "wav") -> Media:
    seconds = max(0, int(seconds))
    channels = 2 if channels == 2 else 1
    if fmt == "mp3":
        head = _id3(sid)
        frames = round(seconds * MP3_FRAMES_PER_SECOND)
        frame = b"\xff\xfb\x18" + (b"\xc0" if channels == 1 else b"\x00") + bytes(MP3_FRAME - 4)
        return Media(CONTENT_TYPES["mp3"], len(head) + frames * MP3_FRAME, _repeat(head, [frame * 64], frames * MP3_FRAME))
    data_bytes = seconds * WAV_BYTES_PER_SECOND * channels
    blocks = _wav_blocks(sid, channels)
    return Media(CONTENT_TYPES["wav"], 44 + data_bytes, _repeat(_wav_header(data_bytes, channels), blocks, data_bytes))


def _repeat(head: bytes, blocks: list[bytes], total: int) -> Iterator[bytes]:
    """`head`, then `total` bytes taken from the blocks in turn, in chunks of about CHUNK."""
    yield head
    sent, i = 0, 0
    while sent < total:
        block = blocks[i % len(blocks)][: total - sent]
        for start in range(0, len(block), CHUNK):
            yield block[start:start + CHUNK]
        sent += len(block)
        i += 1


def _wav_header(data_bytes: int, channels: int) -> bytes:
    block_align = 2 * channels
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, SAMPLE_RATE, SAMPLE_RATE * block_align, block_align, 16)
            + b"data" + struct.pack("<I", data_bytes))


def _wav_blocks(sid: str, channels: int) -> list[bytes]:
    """Eight one-second blocks of a tone (pitch from the sid), at loudnesses from the sid."""
    seed = hashlib.sha256(sid.encode()).digest()
    hz = 200 + seed[0] * 2  # 200-710 Hz, a whole number of cycles per second
    period = [math.sin(2 * math.pi * hz * n / SAMPLE_RATE) for n in range(SAMPLE_RATE)]
    blocks = []
    for level in seed[1:9]:
        amplitude = 2000 + level * 40
        samples = array("h", (int(amplitude * v) for v in period for _ in range(channels)))
        if sys.byteorder == "big":
            samples.byteswap()  # WAV is little-endian
        blocks.append(samples.tobytes())
    return blocks


def _id3(sid: str) -> bytes:
    text = b"\x03" + sid.encode()  # UTF-8 title
    frame = b"TIT2" + struct.pack(">I", len(text)) + b"\x00\x00" + text
    size = len(frame)
    synchsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return b"ID3\x03\x00\x00" + synchsafe + frame
