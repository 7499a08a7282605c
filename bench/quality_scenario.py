"""The ``quality`` scenario: what the quality gate catches, fixes and costs.

1,000 chunks (smoke: 200) of the cache scenario's sentences, spoken as the fakes speak (speech-
like audio at 60 ms a character); 2 % of them come back bad on the first synthesis, in the
fakes' failure modes in turn (mostly silence, cut at half, a looped phrase, babble twice as
long, clipped, NaN), and good when regenerated. Every chunk goes through
``processor.quality_gate.QualityGate`` as in the pipeline. Figures: the bad chunks caught (%),
the bad chunks regenerated and fixed (%), good chunks flagged (false positives) and the gate's
CPU time per second of audio; then the gate's CPU per chunk on the ``overhead`` scenario's
audio (``bench.workload`` texts, ``bench.fake_tts`` speech, one chunk a request), the cost the
default-on gate adds to each record there. It runs in process, without the broker (the gate
sits between a backend's answer and the join, so Kafka adds nothing to what it measures):
``python -m bench.quality_scenario [--chunks N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import structlog

from bench import fake_tts, workload
from bench.cache_scenario import sentence
from bench.report import Row
from processor.audio import wav_info
from processor.backends.base import Audio, Utterance
from processor.observability import Metrics
from processor.quality import Thresholds, failures, measure
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
    audio_s = cpu_s = making_s = 0.0
    caught, fixed, false_positives, dead = Counter[str](), 0, 0, 0
    for index in range(chunks):
        text = " ".join(sentence(rng) for _ in range(rng.randint(1, 3)))
        good = speechlike(len(text) * MS_PER_CHAR, RATE, seed=index)
        audio_s += len(good) / 2 / RATE

        async def synthesize(call: Utterance, index: int = index, good: bytes = good) -> Audio:
            nonlocal making_s
            started = time.process_time()
            calls[index] += 1
            first_bad = index in modes and calls[index] == 1
            made = _audio(spoil(good, RATE, modes[index] if first_bad else "good"))
            making_s += time.process_time() - started
            return made

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
        # The gate's calls less the fake's making of the audio inside them.
        "cpu_ms_per_audio_s": 1000 * (cpu_s - making_s) / audio_s,
        **overhead_audio(chunks),
    }


def overhead_audio(chunks: int) -> dict[str, float]:
    """The gate's checks on the ``overhead`` scenario's audio: CPU per chunk, false positives."""
    thresholds = Thresholds()
    cpu_s = audio_s = 0.0
    flagged = 0
    for _, value in workload.requests("quality", chunks):
        text = json.loads(value)["text"]
        wav = fake_tts.audio(text)
        started = time.process_time()
        measures = measure(wav, text, thresholds)
        flagged += bool(failures(measures, "auto", thresholds, text))
        cpu_s += time.process_time() - started
        audio_s += measures["duration_s"]
    return {
        "overhead_chunks": chunks,
        "overhead_audio_s_per_chunk": round(audio_s / chunks, 2),
        "overhead_cpu_ms_per_chunk": round(1000 * cpu_s / chunks, 3),
        "overhead_false_positives": flagged,
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
        Row(
            "quality",
            "gate CPU ms per chunk (overhead audio)",
            value("overhead_cpu_ms_per_chunk"),
            "lower",
            "",
            2,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=1000)
    print(asyncio.run(measure_gate(parser.parse_args().chunks)))


if __name__ == "__main__":
    main()
