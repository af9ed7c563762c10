"""Debian packages the benchmark is built from: download (`apt-get download`), extract (`dpkg-deb -x`),
record versions. Nothing is installed except the two tools (fluidsynth, espeak-ng), see build.py."""

from __future__ import annotations

import json
import os
import subprocess

# Packages reserved for a held-out check: the benchmark must never use them.
RESERVED_PREFIXES = ("asterisk-core-sounds-",)
RESERVED = frozenset(
    {
        "asterisk-moh-opsound-wav",
        "hydrogen-drumkits",
        "fluid-soundfont-gm",
        "fluid-soundfont-gs",
        "sonic-pi-samples",
        "lmms-common",
        "klettres-data",
        "ktuberling-data",
        "tuxpaint-stamps-default",
        "sound-theme-freedesktop",
        "hyperrogue-music",
        "lincity-ng-data",
        # same samples as fluid-soundfont-gm (FluidR3), kept out too
        "fluidr3mono-gm-soundfont",
    }
)

# name -> role. Roles: soundfont (rendered with fluidsynth), text (espeak-ng input sentences),
# sfx (environmental / game sound effects, unlabelled), music (game music, unlabelled).
PACKAGES = {
    "timgm6mb-soundfont": "soundfont",
    "musescore-general-soundfont-small": "soundfont",
    "csound-soundfont": "soundfont",
    "opl3-soundfont": "soundfont",
    "fortunes": "text",  # English
    "fortunes-de": "text",
    "fortunes-es": "text",
    "fortunes-it": "text",
    "fortunes-pl": "text",
    "fortunes-ru": "text",
    "fortunes-cs": "text",
    "oxygen-sounds": "sfx",
    "lomiri-sounds": "sfx",
    "psi-plus-sounds": "sfx",
    "pingus-data": "sfx",
    "frozen-bubble-data": "sfx",
    "chromium-bsu-data": "sfx",
    "pinball-data": "sfx",
    "extremetuxracer-data": "sfx",
    "pokerth-data": "sfx",
    "asc-music": "music",
    "drascula-music": "music",
}

# The tools the render stage runs (apt-installed: `apt-get install --no-install-recommends ...`).
TOOLS = ("fluidsynth", "espeak-ng")


def is_reserved(name: str) -> bool:
    return name in RESERVED or any(name.startswith(p) for p in RESERVED_PREFIXES)


def check_not_reserved(names) -> None:
    bad = sorted(n for n in names if is_reserved(n))
    if bad:
        raise ValueError(f"reserved packages must not be used: {bad}")


def _deb_field(deb: str, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", deb, field], check=True, capture_output=True, text=True).stdout.strip()


def installed_version(name: str) -> str | None:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else None


def fetch(cache: str, names=None, log=print) -> dict[str, dict]:
    """Downloads and extracts each package into <cache>/pkgs/<name>/ (skipped when done);
    returns {name: {"version", "role", "deb", "sha256"}}."""
    names = sorted(names or PACKAGES)
    check_not_reserved(names)
    debs = os.path.join(cache, "debs")
    os.makedirs(debs, exist_ok=True)
    info = {}
    for name in names:
        done = os.path.join(cache, "pkgs", name + ".done.json")
        if os.path.exists(done):
            with open(done) as f:
                info[name] = json.load(f)
            continue
        before = set(os.listdir(debs))
        existing = sorted(f for f in before if f.startswith(name + "_") and f.endswith(".deb"))
        if not existing:
            log(f"apt-get download {name}")
            subprocess.run(["apt-get", "download", "-q", name], cwd=debs, check=True)
            existing = sorted(f for f in os.listdir(debs) if f.startswith(name + "_") and f.endswith(".deb"))
        deb = os.path.join(debs, existing[-1])
        target = os.path.join(cache, "pkgs", name)
        tmp = target + ".tmp"
        subprocess.run(["rm", "-rf", tmp], check=True)
        os.makedirs(tmp)
        subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
        subprocess.run(["rm", "-rf", target], check=True)
        os.rename(tmp, target)
        from .checksums import sha256_file

        info[name] = {
            "version": _deb_field(deb, "Version"),
            "role": PACKAGES.get(name, "?"),
            "deb": os.path.basename(deb),
            "sha256": sha256_file(deb),
        }
        with open(done, "w") as f:
            json.dump(info[name], f, indent=1, sort_keys=True)
    return info
