"""The audio the sandbox serves: a real half-second WAV built with `wave`, and placeholder MP3 bytes."""

from __future__ import annotations

import io
import math
import wave
from array import array

SAMPLE_RATE = 8000


def _build_wav(seconds: float = 0.5, hz: float = 440.0) -> bytes:
    frames = array("h", (int(8000 * math.sin(2 * math.pi * hz * n / SAMPLE_RATE)) for n in range(int(SAMPLE_RATE * seconds))))
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(frames.tobytes())
    return out.getvalue()


WAV_BYTES = _build_wav()
# Not decodable audio: an ID3 tag and one MPEG frame header. Nothing in the service decodes MP3.
MP3_BYTES = b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x64" + bytes(413)
