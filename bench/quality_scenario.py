"""The ``quality`` scenario: what the quality gate catches, fixes and costs.

1,000 chunks (smoke: 200) of the cache scenario's sentences, spoken as the fakes speak (speech-
like audio at 60 ms a character); 2 % of them come back bad on the first synthesis, in the
fakes' failure modes in turn (mostly silence, cut at half, a looped phrase, babble twice as
long, clipped, NaN), and good when regenerated. Every chunk goes through
``processor.quality_gate.QualityGate`` as in the pipeline. Figures: the bad chunks caught (%),
the bad chunks regenerated and fixed (%), good chunks flagged (false positives) and the gate's
CPU time per second of audio. It runs in process, without the broker (the gate sits between
a backend's answer and the join, so Kafka adds nothing to what it measures):
``python -m bench.quality_scenario [--chunks N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import structlog

from bench.cache_scenario import sentence
from bench.report import Row
from processor.audio import wav_info
from processor.backends.base import Audio, Utterance
from processor.observability import Metrics
from processor.quality import Thresholds
from processor.quality_gate import QualityFailed, QualityGate
from tests.fakes.bad_audio import speechlike, spoil

if TYPE_CHECKING:
    from bench.run import Bench

RATE = 24_000
MS_PER_CHAR = 60
BAD_SHARE = 0.02
BAD_MODES = ("silence", "cut", "loop", "babble", "clipped", "nan")


def _audio(wav: bytes) -> Audio:
    try:
        info = wav_info(wav)
    except ValueError:  # the NaN mode's float WAV, as a backend would pass it on
        return Audio(wav, "wav", RATE, 1, 0)
    return Audio(wav, "wav", info.sample_rate, info.channels, info.duration_ms)


async def measure_gate(chunks: int, seed: int = 5) -> dict[str, Any]:
    """The gate over ``chunks`` chunks, ``BAD_SHARE`` of them bad once: its figures."""
    rng = random.Random(seed)
    gate = QualityGate(Thresholds(), Metrics())
    log = structlog.get_logger().bind(scenario="quality")
    bad = set(rng.sample(range(chunks), max(1, round(chunks * BAD_SHARE))))
    modes = {index: BAD_MODES[i % len(BAD_MODES)] for i, index in enumerate(sorted(bad))}
    calls: Counter[int] = Counter()
    audio_s = cpu_s = 0.0
    caught, fixed, false_positives, dead = Counter[str](), 0, 0, 0
    for index in range(chunks):
        text = " ".join(sentence(rng) for _ in range(rng.randint(1, 3)))
        good = speechlike(len(text) * MS_PER_CHAR, RATE, seed=index)
        audio_s += len(good) / 2 / RATE

        async def synthesize(call: Utterance, index: int = index, good: bytes = good) -> Audio:
            calls[index] += 1
            first_bad = index in modes and calls[index] == 1
            return _audio(spoil(good, RATE, modes[index] if first_bad else "good"))

        started = time.process_time()
        try:
            await gate.made(Utterance(text, language="en"), "bench", synthesize, log)
        except QualityFailed:
            dead += 1
        cpu_s += time.process_time() - started
        if index in modes and calls[index] > 1:
            caught[modes[index]] += 1
            fixed += 1
        elif index not in modes and calls[index] > 1:
            false_positives += 1
    return {
        "chunks": chunks,
        "bad": len(modes),
        "caught_pct": 100 * sum(caught.values()) / len(modes),
        "caught_by_mode": dict(caught),
        "fixed_pct": 100 * fixed / len(modes),
        "false_positives": false_positives,
        "dead_lettered": dead,
        "audio_s": round(audio_s, 1),
        # Includes making the fake audio; the checks alone are measured in the gate's calls.
        "cpu_ms_per_audio_s": 1000 * cpu_s / audio_s,
    }


async def quality(bench: Bench) -> None:
    chunks = 200 if bench.smoke else 1000
    figures = await measure_gate(chunks)
    bench.say(f"quality: {figures}")
    bench.dump["quality"] = figures

    def value(key: str) -> dict[str, float | None]:
        return {"voxline": float(figures[key])}

    bench.rows += [
        Row("quality", "bad chunks caught (%)", value("caught_pct"), "higher", "100"),
        Row("quality", "bad chunks regenerated and fixed (%)", value("fixed_pct"), "higher", "100"),
        Row("quality", "false positives", value("false_positives"), "lower", "0", 0),
        Row("quality", "gate CPU ms per s of audio", value("cpu_ms_per_audio_s"), "lower", ""),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1000)
    print(asyncio.run(measure_gate(parser.parse_args().chunks)))


if __name__ == "__main__":
    main()
