"""A live audio verdict for every call leg: heard, one-way, silent gaps, expected prompt.

A load test must check every leg, not a sample, so the check has a budget: at most
0.3 ms CPU per leg-second (``bench/verdict.py`` prints the figure).  Decoding every
packet does not fit (a PyAV Opus decode is ~75 us per 20 ms packet, 3.8 ms per leg-second),
so the work is split:

* **per packet** (:meth:`LegAudioCheck.on_packet`, hooked on the lean receive path as
  ``CountingRtpReceiver.packet_tap``): store a reference to the payload bytes the receive
  path already made in a preallocated ring.  No allocation, no clock read, no decode.
* **once per second per leg** (:meth:`LegAudioCheck.tick`, driven for all legs of a loop by
  one :class:`VerdictTicker` timer), on the packets of the last second:

  - G.711 (PCMU/PCMA): one ``b"".join`` and a 256-entry lookup table to float (numpy), the
    energy of every packet (20 ms resolution for gaps) and one Goertzel block (200 ms) at
    the expected tone;
  - Opus: payloads of 1-3 bytes are DTX/silence frames without decoding; otherwise a
    *probe*: the last two packets of the second go through one decoder shared by all legs
    of the process (the first washes out the previous leg's state, the second is measured);
    a silent probe is confirmed by two more (middle, start of the second) before the
    second counts as silent.
    Levels read low after the switch (CELT's energy prediction takes a few frames to
    converge), so the audible threshold is generous and the tone test is a ratio;
    one second is audible or not as a whole;
  - a **known pre-encoded far end** (the lean path's ``PreEncodedAudioTrack`` encodes once
    and sends the same payloads to every call): payload fingerprints.  Each received
    payload is looked up in a dict of the reference's distinctive payloads, which says
    both "it is the expected prompt" and whether that frame is audible, with no decode at
    all (and it works for Opus and G.711 alike).

Missing packets count as silence (placed at the end of their second: gap lengths are
exact, their position within the second is not).  Leading silence up to ``grace`` is call
set-up; after it, any silence of at least ``gap`` seconds is a silent gap.  A leg that
never hears anything is one-way (``packets == 0`` tells "no RTP" from "RTP but silence").

Audio is kept only for failed legs: the ring holds the last ``keep`` seconds of payloads
(references, not copies); at the first failure they are snapshotted, the next ``keep / 2``
seconds are added, and the clip is written as a WAV file (decoded then, once).

A sampled leg is *recorded* the same way (:meth:`LegAudioCheck.start_recording`): each
tick appends the second's payload references to a list, and :func:`write_recording`
muxes them, still encoded, into a file at the end (Opus into Ogg, G.711 and G.722 into
WAV, through PyAV): no decode at all, neither per packet nor at the end.
"""

from __future__ import annotations

import asyncio
import enum
import fractions
import io
import struct
import time
import wave
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from softphone.errors import ConfigurationError
from softphone.log import get_logger
from softphone.media.tones import goertzel

log = get_logger(__name__)

PACKET_SECONDS = 0.02
PACKETS_PER_SECOND = 50
#: A 20 ms packet whose RMS is below this is silence (comfort noise sits around -60..-70).
AUDIBLE_DBFS = -50.0
#: Opus probes read low after the shared decoder switches legs: a lower bar for them.
OPUS_PROBE_AUDIBLE_DBFS = -55.0
#: The expected tone must carry at least this fraction of a block's power.
TONE_POWER_RATIO = 0.5
#: A leg is "the expected prompt" when at least this fraction of its evidence says so.
PROMPT_MATCH_FRACTION = 0.5
GOERTZEL_SAMPLES = 1600  # 200 ms at 8 kHz: one block per second
OPUS_DTX_BYTES = 3


# --- G.711 tables ---------------------------------------------------------------------


def _ulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    sample = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return (np.where(sign, -sample, sample) / 32768.0).astype(np.float32)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return (np.where(a & 0x80, t, -t) / 32768.0).astype(np.float32)


#: G.711 byte -> float sample in [-1, 1).
G711_TABLES: dict[str, np.ndarray] = {"pcmu": _ulaw_table(), "pcma": _alaw_table()}


def _level_power(dbfs: float) -> float:
    """Mean square of a signal at ``dbfs`` (RMS re full-scale square wave, as tones.py)."""
    return 10.0 ** (dbfs / 10.0)


# --- outcomes -------------------------------------------------------------------------


class AudioStatus(enum.Enum):
    HEARD = "heard"          # audio throughout (after set-up)
    GAPS = "silent_gaps"     # heard, but with at least one silent gap
    ONE_WAY = "one_way"      # nothing heard from the far end at all
    UNCHECKED = "unchecked"  # too short to say (under one analysis block)


@dataclass(frozen=True)
class SilentGap:
    start: float    # seconds from the start of the leg
    seconds: float


@dataclass(frozen=True)
class LegVerdict:
    """What one leg's far-end audio was, and where its clip is if it failed."""

    leg: str
    codec: str
    method: str  # "g711" | "opus-probe" | "fingerprint" | "packets"
    status: AudioStatus
    seconds: float
    packets: int
    audible_seconds: float
    first_audible: float | None
    gaps: tuple[SilentGap, ...]
    prompt: bool | None  # None: no expected prompt, or no evidence either way
    prompt_score: float | None
    clip: Path | None
    reason: str

    @property
    def failed(self) -> bool:
        return self.status in (AudioStatus.GAPS, AudioStatus.ONE_WAY) or self.prompt is False

    def to_dict(self) -> dict[str, Any]:
        return {
            "leg": self.leg, "codec": self.codec, "method": self.method, "status": self.status.value,
            "seconds": round(self.seconds, 3), "packets": self.packets,
            "audible_seconds": round(self.audible_seconds, 3),
            "first_audible": None if self.first_audible is None else round(self.first_audible, 3),
            "gaps": [{"start": round(g.start, 3), "seconds": round(g.seconds, 3)} for g in self.gaps],
            "prompt": self.prompt,
            "prompt_score": None if self.prompt_score is None else round(self.prompt_score, 3),
            "clip": str(self.clip) if self.clip else None, "reason": self.reason, "failed": self.failed,
        }


# --- the expected prompt --------------------------------------------------------------


class ExpectedPrompt:
    """What the far end is supposed to play: a tone (Goertzel) and/or known payloads."""

    def __init__(self, *, tone_hz: float | None = None,
                 fingerprints: dict[bytes, bool] | None = None, label: str = "") -> None:
        if tone_hz is None and not fingerprints:
            raise ConfigurationError("expect: give a tone frequency or a pre-encoded stream")
        self.tone_hz = tone_hz
        self.fingerprints = fingerprints or {}
        self.label = label or (f"tone:{tone_hz:g}" if tone_hz else "pre-encoded stream")

    def __repr__(self) -> str:
        return f"ExpectedPrompt({self.label!r}, fingerprints={len(self.fingerprints)})"

    @classmethod
    def tone(cls, hz: float) -> ExpectedPrompt:
        return cls(tone_hz=float(hz))

    @classmethod
    def encoded(cls, payloads: Sequence[bytes], codec: str, *, label: str = "",
                tone_hz: float | None = None) -> ExpectedPrompt:
        """From the exact payloads the far end sends (``EncodedAudio.payloads`` of the lean path).

        Only audible frames are kept (decoded once, here): digital silence is the same
        bytes in every stream and says nothing about *which* stream it is.  A received
        payload found here is audible and evidence for the prompt; one not found is
        decoded the codec's cheap way and, when audible, counts against it.
        """
        decoded = _decode_frames(list(payloads), codec)
        audible_power = _level_power(AUDIBLE_DBFS)
        prints = {p: True for p, frame in zip(payloads, decoded, strict=True)
                  if frame.size and float(np.dot(frame, frame)) / frame.size > audible_power}
        if not prints:
            raise ConfigurationError(f"expect: the {codec} stream {label!r} has no audible frames")
        return cls(tone_hz=tone_hz, fingerprints=prints, label=label)

    @classmethod
    def from_source(cls, text: str) -> ExpectedPrompt | None:
        """From a scenario's ``expect`` ("tone:HZ"); files need :meth:`encoded` (see the module doc)."""
        if text.startswith("tone:"):
            return cls.tone(float(text[5:]))
        return None


# --- decoding (only for probes, references and failed clips) -------------------------


class _OpusProbe:
    """One Opus decoder shared by every leg of the process (see the module docstring)."""

    def __init__(self) -> None:
        self._ctx: Any = None

    def decode(self, payloads: Sequence[bytes]) -> np.ndarray:
        """Mono float samples (48 kHz) of the *last* payload, the others warming the decoder up."""
        if self._ctx is None:
            self._ctx = _opus_decoder()
        out = np.zeros(0, dtype=np.float32)
        for payload in payloads:
            try:
                frames = self._ctx.decode(av.Packet(payload))
            except av.error.FFmpegError:
                self._ctx = _opus_decoder()
                continue
            for frame in frames:
                out = _mono(frame)
        return out


def _opus_decoder() -> Any:
    ctx = av.CodecContext.create("libopus", "r")
    ctx.sample_rate = 48000
    ctx.layout = "stereo"
    return ctx


def _mono(frame: av.AudioFrame) -> np.ndarray:
    data = frame.to_ndarray()
    if data.dtype == np.int16:
        x = data.astype(np.float32) / 32768.0
    else:
        x = data.astype(np.float32)
    if frame.format.is_planar:
        return x[0]
    channels = len(frame.layout.channels)
    return x.reshape(-1)[::channels] if channels > 1 else x.reshape(-1)


_opus_probe = _OpusProbe()


def _decode_frames(payloads: list[bytes], codec: str) -> list[np.ndarray]:
    """Every payload decoded (one fresh decoder): references and clips, never per packet live."""
    table = G711_TABLES.get(codec)
    if table is not None:
        return [table[np.frombuffer(p, dtype=np.uint8)] for p in payloads]
    if codec == "opus":
        ctx = _opus_decoder()
        out = []
        for p in payloads:
            frames = [] if not p else ctx.decode(av.Packet(p))
            out.append(np.concatenate([_mono(f) for f in frames]) if frames else np.zeros(0, np.float32))
        return out
    raise ConfigurationError(f"codec: {codec!r} cannot be decoded by the verdict")


def _clip_pcm(payloads: list[bytes], codec: str) -> tuple[bytes, int]:
    """Decoded 16-bit mono PCM and its rate (8 kHz for G.711, 16 kHz for Opus)."""
    frames = _decode_frames(payloads, codec)
    x = np.concatenate(frames) if frames else np.zeros(0, np.float32)
    rate = 8000
    if codec == "opus":
        x, rate = x[::3], 16000  # 48 -> 16 kHz; Opus's own low-pass keeps aliasing small
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2").tobytes(), rate


def clip_wav(payloads: list[bytes], codec: str) -> bytes:
    """``payloads`` decoded into the bytes of a WAV file."""
    pcm, rate = _clip_pcm(payloads, codec)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def write_clip(path: Path, payloads: list[bytes], codec: str) -> Path:
    """Decode ``payloads`` and write them as a WAV file at ``path``."""
    data = clip_wav(payloads, codec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


#: How received payloads are saved without decoding: container, FFmpeg codec, sample rate,
#: samples per 20 ms packet, file suffix.
RECORDING_FORMATS: dict[str, tuple[str, str, int, int, str]] = {
    "opus": ("ogg", "libopus", 48000, 960, ".ogg"),
    "pcmu": ("wav", "pcm_mulaw", 8000, 160, ".wav"),
    "pcma": ("wav", "pcm_alaw", 8000, 160, ".wav"),
    "g722": ("wav", "g722", 16000, 320, ".wav"),
}
#: G.711 silence, written for packets lost in a recording (WAV has no timestamps to skip them).
_G711_SILENCE = {"pcmu": b"\xff" * 160, "pcma": b"\xd5" * 160}
#: A stream recorded from its middle: decoders drop this much while they converge (RFC 7845 4.2).
OPUS_PRE_SKIP = 3840
MAX_FILLED_GAP = 500  # packets (10 s): a longer sequence jump is a new stream, not a loss


def recording_suffix(codec: str) -> str:
    """The file suffix :func:`write_recording` gives ``codec`` (".ogg" for Opus, else ".wav")."""
    return RECORDING_FORMATS[codec.lower().removeprefix("audio/")][4]


def write_recording(path: Path, payloads: Sequence[bytes], seqs: Sequence[int], codec: str) -> Path:
    """Mux received ``payloads`` (RTP sequence numbers ``seqs``) as they are into ``path``.

    Lost packets: a gap in the Ogg timestamps (Opus) or written silence (G.711).  Called
    off the event loop (a thread) by the load runner: it is file I/O and one PyAV call per packet.
    """
    codec = codec.lower().removeprefix("audio/")
    if codec not in RECORDING_FORMATS:
        raise ConfigurationError(f"codec: cannot record {codec!r}")
    container, name, rate, step, _ = RECORDING_FORMATS[codec]
    silence = _G711_SILENCE.get(codec)
    path.parent.mkdir(parents=True, exist_ok=True)
    time_base = fractions.Fraction(1, rate)
    out = av.open(str(path), "w", format=container)
    try:
        stream = out.add_stream(name, rate=rate)
        stream.codec_context.layout = "mono"
        if codec == "opus":  # the Ogg Opus identification header (RFC 7845 5.1): 1 channel, 48 kHz
            stream.codec_context.extradata = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, OPUS_PRE_SKIP, 48000, 0, 0)
        pts = 0
        previous: int | None = None
        for payload, seq in zip(payloads, seqs, strict=True):
            if previous is not None:
                lost = ((seq - previous) & 0xFFFF) - 1
                if 0 < lost <= MAX_FILLED_GAP:
                    if silence is not None:
                        for _ in range(lost):
                            pts = _mux(out, stream, silence, pts, step, time_base)
                    else:
                        pts += lost * step
            previous = seq
            pts = _mux(out, stream, payload, pts, step, time_base)
    finally:
        out.close()
    return path


def _mux(out: Any, stream: Any, payload: bytes, pts: int, step: int, time_base: fractions.Fraction) -> int:
    packet = av.Packet(payload)
    packet.stream = stream
    packet.pts = packet.dts = pts
    packet.duration = step
    packet.time_base = time_base
    out.mux(packet)
    return pts + step


# --- one leg --------------------------------------------------------------------------


class LegAudioCheck:
    """The verdict of one call leg's received audio; see the module docstring.

    Feed it packets with :meth:`on_packet` (or :meth:`attach` it to a lean receiver),
    call :meth:`tick` about once a second (a :class:`VerdictTicker` does), and
    :meth:`finish` when the leg ends.
    """

    __slots__ = (
        "_audible",
        "_block_start",
        "_clip_after",
        "_clip_before",
        "_clip_dir",
        "_clip_pending",
        "_clock",
        "_count",
        "_first_audible",
        "_gap_open",
        "_gaps",
        "_held",
        "_i",
        "_last_count",
        "_last_seq",
        "_owed",
        "_paused",
        "_pt",
        "_rec_from",
        "_rec_payloads",
        "_rec_seqs",
        "_receiver",
        "_ref_hits",
        "_ref_seen",
        "_ring",
        "_seqs",
        "_silence",
        "_size",
        "_start",
        "_tone_blocks",
        "_tone_evidence",
        "clip",
        "codec",
        "expect",
        "failure",
        "first_packet",
        "gap",
        "grace",
        "keep",
        "leg",
        "method",
    )

    def __init__(self, codec: str, *, leg: str = "leg", expect: ExpectedPrompt | None = None,
                 gap: float = 1.0, keep: float = 3.0, grace: float = 2.0, clip_dir: Path | None = None,
                 clock: Callable[[], float] = time.monotonic, start: float | None = None) -> None:
        codec = codec.lower().removeprefix("audio/")
        if codec not in ("pcmu", "pcma", "opus", "g722"):
            raise ConfigurationError(f"codec: the audio verdict knows pcmu, pcma, opus, g722; got {codec!r}")
        if gap < 0.2:
            raise ConfigurationError(f"gap: at least 0.2 s, got {gap}")
        self.codec = codec
        self.leg = leg
        self.expect = expect
        self.gap = gap
        self.keep = keep
        self.grace = grace
        self.method = ("fingerprint" if expect is not None and expect.fingerprints else
                       "g711" if codec in G711_TABLES else "opus-probe" if codec == "opus" else "packets")
        self._clip_dir = clip_dir
        self._clock = clock
        self._size = max(PACKETS_PER_SECOND + 10, int(keep * PACKETS_PER_SECOND) + 10)
        self._ring: list[bytes] = [b""] * self._size
        self._seqs: list[int] = [0] * self._size
        self._last_seq: int | None = None
        self._owed = 0
        self._paused = False
        self._held = 0.0  # seconds on hold (not judged)
        self._i = 0
        self._count = 0
        self._last_count = 0
        self._pt = -1
        self._start = clock() if start is None else start
        self._block_start = self._start
        self._audible = 0.0           # seconds of audible audio
        self._first_audible: float | None = None
        self._silence = 0.0           # current silent run (s), since the last audible frame
        self._gap_open = False
        self._gaps: list[SilentGap] = []
        self._tone_blocks = 0
        self._tone_evidence = 0
        self._ref_hits = 0
        self._ref_seen = 0
        self._clip_before: list[bytes] | None = None
        self._clip_after: list[bytes] = []
        self._clip_pending = 0
        self._rec_payloads: list[bytes] | None = None  # recording: the payloads since start_recording
        self._rec_seqs: list[int] = []
        self._rec_from = 0
        self._receiver: Any = None
        self.clip: Path | None = None
        self.failure: str | None = None
        self.first_packet: float | None = None  # clock() at the first audio packet

    def __repr__(self) -> str:
        return f"LegAudioCheck({self.leg!r}, {self.codec}, {self.method}, packets={self._count})"

    # -- the per-packet hook (keep it tiny)

    def on_packet(self, packet: Any) -> None:
        """Keep a reference to one packet's payload; the receive path calls this per packet."""
        if packet.payload_type != self._pt and not self._learn(packet):
            return
        i = self._i
        self._ring[i] = packet.payload
        self._seqs[i] = packet.sequence_number
        i += 1
        self._i = 0 if i == self._size else i
        self._count += 1

    def _learn(self, packet: Any) -> bool:
        """Adopt the first audio packet's payload type (RFC 4733 events are 4 bytes)."""
        if self._pt == -1 and len(packet.payload) != 4:
            self._pt = packet.payload_type
            self.first_packet = self._clock()  # the one clock read of the per-packet path
            return True
        return False

    @property
    def packets(self) -> int:
        return self._count

    def attach(self, receiver: Any) -> LegAudioCheck:
        """Hook onto a lean counting receiver: its per-packet ``count_rtp`` also feeds this check.

        The hook is an instance attribute wrapping the class's method (one extra call
        per packet), so the media layer needs no knowledge of the verdict; both the
        fast receive path and aiortc's path call ``count_rtp`` on the instance.
        """
        name = next((n for n in ("count_rtp", "_count_rtp") if callable(getattr(type(receiver), n, None))), None)
        if name is None:
            raise ConfigurationError(f"receiver: {type(receiver).__name__} is not a counting receiver "
                                     "(install the lean path's counting receiver first)")
        if name in receiver.__dict__:
            raise ConfigurationError(f"receiver: already has a packet hook on {name}")
        original = getattr(receiver, name)
        on_packet = self.on_packet

        def count_and_check(packet: Any) -> bool:
            on_packet(packet)
            return original(packet)

        setattr(receiver, name, count_and_check)
        self._receiver = (receiver, name)
        return self

    def detach(self) -> None:
        if self._receiver is not None:
            receiver, name = self._receiver
            receiver.__dict__.pop(name, None)
        self._receiver = None

    # -- once a second

    def _recent(self, n: int, ring: list | None = None) -> list:
        """The last ``n`` payloads (or sequence numbers) in arrival order (n <= ring size)."""
        ring = self._ring if ring is None else ring
        n = min(n, self._size, self._count)
        i = self._i
        if n <= i:
            return ring[i - n:i]
        return ring[self._size - (n - i):] + ring[:i]

    def tick(self, now: float | None = None) -> None:
        """Analyse the packets received since the previous tick."""
        now = self._clock() if now is None else now
        elapsed = now - self._block_start
        if elapsed <= 0:
            return
        new = self._count - self._last_count
        payloads = self._recent(new)
        seqs = self._recent(new, self._seqs)
        self._last_count = self._count
        block_start = self._block_start
        self._block_start = now
        if self._rec_payloads is not None and payloads:
            skip = max(0, self._rec_from - (self._count - len(payloads)))  # arrived before the start
            self._rec_payloads.extend(payloads[skip:])
            self._rec_seqs.extend(seqs[skip:])
        if self._paused:
            # On hold: silence is expected and not judged; the silent run starts again after.
            self._last_seq = seqs[-1] if seqs else self._last_seq
            self._owed = 0
            self._silence = 0.0
            self._gap_open = False
            self._held += elapsed
            return
        flags = self._timeline(self._audible_flags(payloads), seqs)
        expected = max(len(flags), round(elapsed / PACKET_SECONDS))
        self._owed = expected - len(flags)  # not arrived yet: silence now, not again when seen lost
        self._account(flags, expected, block_start)
        if self._clip_before is not None and self._clip_pending > 0:
            self._clip_after.extend(payloads[-self._clip_pending:] if self._clip_pending < len(payloads)
                                    else payloads)
            self._clip_pending -= len(payloads)
            if self._clip_pending <= 0:
                self._write_clip()

    def pause(self, now: float | None = None) -> None:
        """Stop judging (the call goes on hold): what arrived so far is analysed first."""
        if not self._paused:
            self.tick(now)
            self._paused = True

    def resume(self, now: float | None = None) -> None:
        """Judge again (the call is retrieved); the time on hold is neither heard nor a gap."""
        if self._paused:
            self.tick(now)
            self._paused = False

    # -- recording a sample of legs (the ring's payloads, kept past the second they arrived in)

    @property
    def recording(self) -> bool:
        return self._rec_payloads is not None

    def start_recording(self) -> None:
        """Keep every payload from now on (references, collected once a second by :meth:`tick`)."""
        if self._rec_payloads is None:
            self._rec_payloads, self._rec_seqs, self._rec_from = [], [], self._count

    def take_recording(self) -> tuple[list[bytes], list[int]]:
        """Stop recording: the payloads since :meth:`start_recording` and their RTP sequence
        numbers, for :func:`write_recording`."""
        if self._rec_payloads is None:
            return [], []
        if self._receiver is not None:
            self.tick()  # the packets since the last tick (a finished leg had its last tick)
        payloads, seqs = self._rec_payloads, self._rec_seqs
        self._rec_payloads, self._rec_seqs = None, []
        return payloads, seqs

    def _timeline(self, flags: np.ndarray, seqs: list[int]) -> np.ndarray:
        """Place each packet's flag at its sequence position, lost packets as silence between."""
        if not seqs:
            return flags
        base = (seqs[0] - 1) & 0xFFFF if self._last_seq is None else self._last_seq
        pos = (np.asarray(seqs, dtype=np.int64) - base - 1) & 0xFFFF
        self._last_seq = seqs[-1] if pos[-1] >= pos.max() else (base + 1 + int(pos.max())) & 0xFFFF
        length = int(pos.max()) + 1
        if length > 20 * max(1, flags.size) + 500:
            return flags  # nothing lost (the common case), or a sequence jump: keep arrival order
        line = np.zeros(length, dtype=bool)
        line[pos] = flags
        skip = min(self._owed, int(pos.min()))  # counted as silence by the previous tick already
        return line[skip:]

    def _audible_flags(self, payloads: list[bytes]) -> np.ndarray:
        """One bool per received payload: audible or not (and prompt evidence on the side)."""
        n = len(payloads)
        if n == 0:
            return np.zeros(0, dtype=bool)
        prints = self.expect.fingerprints if self.expect is not None else None
        if prints:
            flags = np.zeros(n, dtype=bool)
            unknown: list[int] = []
            for k, p in enumerate(payloads):
                hit = prints.get(p)
                if hit is None:
                    unknown.append(k)
                else:
                    flags[k] = hit
            hits = n - len(unknown)
            self._ref_hits += hits
            self._ref_seen += hits
            if unknown:
                other = self._codec_flags([payloads[k] for k in unknown])
                flags[unknown] = other
                self._ref_seen += int(other.sum())
            return flags
        return self._codec_flags(payloads)

    def _codec_flags(self, payloads: list[bytes]) -> np.ndarray:
        n = len(payloads)
        table = G711_TABLES.get(self.codec)
        if table is not None:
            raw = np.frombuffer(b"".join(payloads), dtype=np.uint8)
            x = table[raw]
            if raw.size == n * 160:
                power = np.einsum("ij,ij->i", x.reshape(n, 160), x.reshape(n, 160)) / 160.0
            else:  # odd packet sizes (not 20 ms): one figure for the block
                power = np.full(n, float(np.dot(x, x)) / max(1, x.size))
            flags = power > _level_power(AUDIBLE_DBFS)
            if self.expect is not None and self.expect.tone_hz and flags.any():
                self._tone_check(x[-GOERTZEL_SAMPLES:] if x.size >= GOERTZEL_SAMPLES else x, 8000)
            return flags
        if self.codec == "opus":
            big = [p for p in payloads if len(p) > OPUS_DTX_BYTES]
            if not big:
                return np.zeros(n, dtype=bool)
            # The end of the second first; a silent probe is confirmed at the middle and the
            # start before the whole second counts as silence (silence is rare: ~2 decodes/s).
            bar = _level_power(OPUS_PROBE_AUDIBLE_DBFS)
            audible = False
            for at in (len(big), len(big) // 2 + 1, 2):
                x = _opus_probe.decode(big[max(0, at - 2):at])
                if x.size and float(np.dot(x, x)) / x.size > bar:
                    audible = True
                    break
                if len(big) <= 2:
                    break
            if audible and self.expect is not None and self.expect.tone_hz:
                self._tone_check(x, 48000)
            return np.fromiter((audible and len(p) > OPUS_DTX_BYTES for p in payloads), dtype=bool, count=n)
        return np.ones(n, dtype=bool)  # "packets": arrival is all we can tell

    def _tone_check(self, x: np.ndarray, rate: int) -> None:
        assert self.expect is not None and self.expect.tone_hz is not None
        total = float(np.dot(x, x)) / x.size
        amp = float(goertzel(x.astype(np.float64), [self.expect.tone_hz], rate)[0])
        self._tone_evidence += 1
        if total > 0 and (amp * amp / 2.0) / total >= TONE_POWER_RATIO:
            self._tone_blocks += 1

    def _account(self, flags: np.ndarray, expected: int, block_start: float) -> None:
        """Fold one block's audible flags (+ missing packets as silence) into the runs."""
        n = flags.size
        missing = max(0, expected - n)
        heard = np.flatnonzero(flags)
        self._audible += heard.size * PACKET_SECONDS
        if heard.size == 0:
            self._silence += (n + missing) * PACKET_SECONDS
        else:
            lead = heard[0] * PACKET_SECONDS
            first_t = block_start - self._start + lead
            if self._first_audible is None:
                self._first_audible = first_t
                if first_t > self.grace:
                    self._close_gap(self.grace, first_t - self.grace)
            else:
                self._close_gap(first_t - self._silence - lead, self._silence + lead)
            if heard.size > 1:
                runs = np.diff(heard) - 1
                for k in np.flatnonzero(runs * PACKET_SECONDS >= self.gap):
                    start = block_start - self._start + (heard[k] + 1) * PACKET_SECONDS
                    self._close_gap(start, runs[k] * PACKET_SECONDS)
            self._silence = (n - 1 - heard[-1] + missing) * PACKET_SECONDS
            self._gap_open = False
        elapsed = block_start - self._start + expected * PACKET_SECONDS
        if self._first_audible is None:
            if elapsed >= self.grace:
                self._fail("nothing heard from the far end")
        elif self._silence >= self.gap and not self._gap_open:
            self._gap_open = True
            self._fail(f"silent for {self._silence:.1f}s")

    def _close_gap(self, start: float, seconds: float) -> None:
        if seconds >= self.gap - 1e-9:
            self._gaps.append(SilentGap(max(0.0, start), seconds))
            self._fail(f"silent gap of {seconds:.1f}s")

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            log.info("leg %s: %s", self.leg, reason)
        if self._clip_before is None and self._clip_dir is not None:
            self._clip_before = self._recent(int(self.keep * PACKETS_PER_SECOND))
            self._clip_pending = int(self.keep * PACKETS_PER_SECOND / 2)

    def _write_clip(self) -> None:
        if self._clip_before is None or self._clip_dir is None or self.clip is not None:
            return
        payloads = [p for p in self._clip_before + self._clip_after if p]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.leg)
        try:
            self.clip = write_clip(self._clip_dir / f"{safe}.wav", payloads, self.codec)
        except (OSError, av.error.FFmpegError) as exc:
            log.warning("leg %s: could not write the audio clip: %s", self.leg, exc)
        self._clip_pending = 0

    # -- the end

    def finish(self, now: float | None = None) -> LegVerdict:
        """Final tick and the verdict; writes the clip of a failed leg."""
        now = self._clock() if now is None else now
        self.tick(now)
        self.detach()
        seconds = now - self._start
        gaps = list(self._gaps)
        if self._first_audible is not None and self._silence >= self.gap:
            gaps.append(SilentGap(max(0.0, seconds - self._silence), self._silence))
        prompt, score = self._prompt()
        if seconds < 1.0 and self._first_audible is None:
            status, reason = AudioStatus.UNCHECKED, f"leg lasted {seconds:.2f}s"
        elif self._first_audible is None:
            status = AudioStatus.ONE_WAY
            reason = ("no RTP from the far end" if self._count == 0
                      else f"{self._count} packets, all silent")
        elif gaps:
            status = AudioStatus.GAPS
            reason = f"{len(gaps)} silent gap(s), longest {max(g.seconds for g in gaps):.1f}s"
        else:
            status, reason = AudioStatus.HEARD, "heard"
        if prompt is False:
            reason += f"; not the expected prompt ({self.expect.label if self.expect else ''}, score {score:.2f})"
            if self.failure is None:
                self._fail("not the expected prompt")
        if status in (AudioStatus.GAPS, AudioStatus.ONE_WAY) or prompt is False:
            if self._clip_before is None and self._clip_dir is not None:
                self._clip_before = self._recent(int(self.keep * PACKETS_PER_SECOND))
            self._write_clip()
        return LegVerdict(
            leg=self.leg, codec=self.codec, method=self.method, status=status, seconds=seconds,
            packets=self._count, audible_seconds=self._audible, first_audible=self._first_audible,
            gaps=tuple(gaps), prompt=prompt, prompt_score=score, clip=self.clip, reason=reason)

    def _prompt(self) -> tuple[bool | None, float | None]:
        if self.expect is None:
            return None, None
        if self.expect.fingerprints and self._ref_seen:
            score = self._ref_hits / self._ref_seen
            if score >= PROMPT_MATCH_FRACTION or not self.expect.tone_hz or not self._tone_evidence:
                return score >= PROMPT_MATCH_FRACTION, score
        if self.expect.tone_hz and self._tone_evidence:
            score = self._tone_blocks / self._tone_evidence
            return score >= PROMPT_MATCH_FRACTION, score
        return None, None


# --- many legs, one timer -------------------------------------------------------------


class VerdictTicker:
    """Ticks every registered leg once per ``interval``, the legs spread over ``slices`` timers.

    Ticking all of a worker's legs in one callback blocked its loop 15-28 ms every second
    with 75 legs (twice that at 150): each leg is placed in the least full of ``slices``
    groups, and one group is ticked every ``interval / slices``, so a callback holds the loop
    for a tenth of that and every leg is still judged once per interval.
    """

    def __init__(self, interval: float = 1.0, slices: int = 10) -> None:
        if not interval > 0:
            raise ConfigurationError(f"interval: must be > 0, got {interval}")
        if slices < 1:
            raise ConfigurationError(f"slices: must be >= 1, got {slices}")
        self.interval = interval
        self._slices: list[dict[int, LegAudioCheck]] = [{} for _ in range(slices)]
        self._slice_of: dict[int, int] = {}
        self._next = 0
        self._handle: asyncio.TimerHandle | None = None
        self.tick_seconds = 0.0  # CPU time spent ticking (the verdict's own cost)

    def __len__(self) -> int:
        return len(self._slice_of)

    def add(self, leg: LegAudioCheck) -> LegAudioCheck:
        if id(leg) not in self._slice_of:
            index = min(range(len(self._slices)), key=lambda i: len(self._slices[i]))
            self._slices[index][id(leg)] = leg
            self._slice_of[id(leg)] = index
        if self._handle is None:
            self._schedule()
        return leg

    def remove(self, leg: LegAudioCheck) -> None:
        index = self._slice_of.pop(id(leg), None)
        if index is not None:
            self._slices[index].pop(id(leg), None)

    def finish(self, leg: LegAudioCheck) -> LegVerdict:
        self.remove(leg)
        return leg.finish()

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        self._handle = loop.call_later(self.interval / len(self._slices), self._tick)

    def _tick(self) -> None:
        started = time.thread_time()
        now = time.monotonic()
        group = self._slices[self._next]
        self._next = (self._next + 1) % len(self._slices)
        for leg in list(group.values()):
            try:
                leg.tick(now)
            except Exception:  # one leg's bad packet must not stop the others' checks
                log.exception("audio verdict of leg %s failed", leg.leg)
                self.remove(leg)
        self.tick_seconds += time.thread_time() - started
        if self._slice_of:
            self._schedule()
        else:
            self._handle = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for group in self._slices:
            group.clear()
        self._slice_of.clear()


def summarize(verdicts: Iterable[LegVerdict]) -> dict[str, int]:
    """Counts by status (and prompt mismatches) for progress lines and reports."""
    out: dict[str, int] = {s.value: 0 for s in AudioStatus}
    out["prompt_mismatch"] = 0
    for v in verdicts:
        out[v.status.value] += 1
        if v.prompt is False:
            out["prompt_mismatch"] += 1
    return out

