"""The lean media path for load tests, in one import: pre-encoded sending, counting-only receiving.

Stock aiortc spends most of a call's CPU on thread hand-offs (each frame is
encoded in an executor and decoded in a per-receiver thread), on Opus encoding
and on a pure-Python audio-level loop.  The lean path encodes a source once per
codec and shares it (:mod:`softphone.media.encoded_audio`), sends it as
:class:`~softphone.media.pre_encoded_track.PreEncodedAudioTrack` (through
:mod:`softphone.media.lean_sender` when the fast path is on), and counts RTP
instead of decoding it (:mod:`softphone.media.counting_receiver`).

This module only re-exports those names from where they live, for code written
against it; new code imports from the modules themselves.
"""

from __future__ import annotations

from softphone.media.codecs import CODECS, FRAME_SECONDS, CodecSpec, codec_spec
from softphone.media.counting_receiver import (
    ACTIVE_SSRC_EVERY,
    CountingRtpReceiver,
    DroppingFrameQueue,
    install_counting_receiver,
)
from softphone.media.encoded_audio import (
    AudioSource,
    EncodedAudio,
    EncodedAudioCache,
    Tone,
    encode_source,
    shared_cache,
)
from softphone.media.peer import release_peer_connection
from softphone.media.pre_encoded_track import EncodedPacket, PlaybackState, PreEncodedAudioTrack

__all__ = [
    "ACTIVE_SSRC_EVERY", "CODECS", "FRAME_SECONDS", "AudioSource", "CodecSpec", "CountingRtpReceiver",
    "DroppingFrameQueue", "EncodedAudio", "EncodedAudioCache", "EncodedPacket", "PlaybackState",
    "PreEncodedAudioTrack", "Tone", "codec_spec", "encode_source", "install_counting_receiver",
    "release_peer_connection", "shared_cache",
]
