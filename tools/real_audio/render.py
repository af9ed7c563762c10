"""Rendering stage: MIDI note lists -> fluidsynth (one long render per soundfont and purpose, cut
into slots later), text -> espeak-ng wavs. Outputs go to <cache>/render/ and are reused when present.

Fixed settings (determinism): fluidsynth at 16 kHz, float output, reverb and chorus off, gain 0.5,
one synthesis thread; MIDI at 960 ticks per second; espeak-ng at its native 22.05 kHz."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess

FS_RATE = 16000
FS_GAIN = 0.5
TICKS_PER_SECOND = 960  # 480 ticks per quarter at 120 bpm


def have(tool: str) -> bool:
    return shutil.which(tool) is not None


def tool_version(tool: str) -> str:
    try:
        out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "missing"


# ---------------------------------------------------------------- soundfont presets
def pdta_chunks(path: str) -> dict[str, bytes]:
    """The sub-chunks of an SF2/SF3 file's pdta list (phdr, pbag, pgen, inst, ibag, igen, shdr, ...)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise ValueError(f"{path}: not a SoundFont")
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if cid == b"LIST" and data[pos + 8 : pos + 12] == b"pdta":
            out, sub, end = {}, pos + 12, pos + 8 + size
            while sub + 8 <= end:
                sid, ssize = data[sub : sub + 4], struct.unpack("<I", data[sub + 4 : sub + 8])[0]
                out[sid.decode("latin-1")] = data[sub + 8 : sub + 8 + ssize]
                sub += 8 + ssize + (ssize & 1)
            return out
        nxt = pos + 8 + size
        # RIFF pads odd chunks to even length, but some SF3 writers do not: take whichever lands
        # on a chunk id
        pos = nxt + 1 if (size & 1) and data[nxt + 1 : nxt + 5] in (b"LIST", b"RIFF") else nxt
    raise ValueError(f"{path}: no pdta chunk")


def sf_records(chunk: bytes, fmt: str) -> list[tuple]:
    """The fixed-size records of a pdta sub-chunk, unpacked with `fmt` (terminal record included)."""
    n = struct.calcsize(fmt)
    return [struct.unpack(fmt, chunk[i : i + n]) for i in range(0, len(chunk) - n + 1, n)]


def sf_name(raw: bytes) -> str:
    """A record's 20-byte name field as text."""
    return raw.split(b"\0")[0].decode("latin-1").strip()


def sf_presets(path: str) -> list[tuple[int, int, str]]:
    """(bank, program, name) of every preset in an SF2/SF3 file (its pdta/phdr chunk)."""
    phdr = pdta_chunks(path).get("phdr")
    if phdr is None:
        raise ValueError(f"{path}: no phdr chunk")
    records = sf_records(phdr, "<20sHHHIII")[:-1]  # the last record is EOP
    return sorted({(bank, program, sf_name(name)) for name, program, bank, *_ in records})


# ---------------------------------------------------------------- MIDI writing
def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def write_midi(path: str, events: list[tuple[float, int, bytes]]) -> None:
    """events: (time in seconds, order key, raw MIDI message bytes); format 0, one track."""
    track = bytearray(b"\x00\xff\x51\x03\x07\xa1\x20")  # tempo 500000 us per quarter
    last = 0
    for t, _, msg in sorted(events, key=lambda e: (round(e[0] * TICKS_PER_SECOND), e[1], e[2])):
        tick = round(t * TICKS_PER_SECOND)
        track += _vlq(tick - last) + msg
        last = tick
    track += b"\x00\xff\x2f\x00"
    with open(path, "wb") as f:
        f.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS_PER_SECOND // 2))
        f.write(b"MTrk" + struct.pack(">I", len(track)) + bytes(track))


def slot_events(slots: list[dict], slot_seconds: float, clip_seconds: float) -> list:
    """MIDI events for a list of slots. Slot k starts at k*slot_seconds; each slot dict has
    channel, bank (for channel 9: ignored), program, notes [(onset, duration, pitch, velocity)];
    all sound is cut at the slot's clip end (CC120 + CC123)."""
    ev = []
    for k, slot in enumerate(slots):
        t0 = k * slot_seconds
        ch = slot["channel"]
        if ch != 9:
            ev.append((t0, 0, bytes([0xB0 | ch, 0, slot["bank"]])))
        ev.append((t0, 1, bytes([0xC0 | ch, slot["program"]])))
        for onset, dur, pitch, vel in slot["notes"]:
            ev.append((t0 + 0.05 + onset, 3, bytes([0x90 | ch, pitch, vel])))
            ev.append((t0 + 0.05 + min(onset + dur, clip_seconds - 0.1), 2, bytes([0x80 | ch, pitch, 0])))
        ev.append((t0 + clip_seconds, 4, bytes([0xB0 | ch, 120, 0])))
        ev.append((t0 + clip_seconds, 5, bytes([0xB0 | ch, 123, 0])))
    if slots:
        ev.append((len(slots) * slot_seconds, 6, bytes([0xB0, 121, 0])))  # end marker time
    return ev


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def fluidsynth_render(soundfont: str, slots: list[dict], out_wav: str, slot_seconds: float, clip_seconds: float) -> str:
    """Renders the slots into one float wav (skipped when a render of the same request exists)."""
    key = _digest(
        {
            "sf": os.path.basename(soundfont),
            "slots": slots,
            "slot": slot_seconds,
            "clip": clip_seconds,
            "rate": FS_RATE,
            "gain": FS_GAIN,
        }
    )
    stamp = out_wav + ".key"
    if os.path.exists(out_wav) and os.path.exists(stamp) and open(stamp).read() == key:
        return out_wav
    os.makedirs(os.path.dirname(out_wav), exist_ok=True)
    mid = out_wav[:-4] + ".mid"
    write_midi(mid, slot_events(slots, slot_seconds, clip_seconds))
    tmp = out_wav + ".tmp.wav"
    cmd = [
        "fluidsynth",
        "-n",
        "-i",
        "-q",
        "-R",
        "0",
        "-C",
        "0",
        "-g",
        str(FS_GAIN),
        "-r",
        str(FS_RATE),
        "-o",
        "synth.cpu-cores=1",
        "-o",
        "synth.polyphony=256",
        "-o",
        "synth.reverb.active=0",
        "-o",
        "synth.chorus.active=0",
        "-F",
        tmp,
        "-T",
        "wav",
        "-O",
        "float",
        soundfont,
        mid,
    ]
    subprocess.run(["nice", "-n", "10"] + cmd, check=True, stdout=subprocess.DEVNULL)
    os.replace(tmp, out_wav)
    with open(stamp, "w") as f:
        f.write(key)
    return out_wav


def espeak_render(text: str, voice: str, speed: int, pitch: int, out_wav: str) -> str:
    """espeak-ng -> wav (22.05 kHz mono 16-bit); skipped when present."""
    if os.path.exists(out_wav):
        return out_wav
    os.makedirs(os.path.dirname(out_wav), exist_ok=True)
    tmp = out_wav + ".tmp.wav"
    subprocess.run(
        ["nice", "-n", "10", "espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", tmp, "--", text],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    os.replace(tmp, out_wav)
    return out_wav
