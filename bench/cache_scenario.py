"""The ``cache`` scenario: what the chunk cache saves.

1. A book (100 chapters of 25 sentences; smoke: 10) is rendered with the cache on, then
   rendered again under new request ids with 1 % of its sentences edited: backend calls and
   wall time of the second run relative to the first (targets: calls <= 2 %, wall <= 10 %).
2. A long chapter whose last chunk keeps failing (the fake fails that call and its retries) is
   dead-lettered; its dead letter is then replayed: backend calls and wall time of the replay
   relative to the first render.

With the cache on, a chunk is one sentence (``processor.chunking.split_sentences``), so an
edit cannot move its neighbours' boundaries; a chapter seen before is read back as one bundle
object (``processor.cache_bundle``). Wall time is from the moment the processor holds its
partitions (the requests already wait) to its last completion event, so the process's start-up
is left out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import Fake
from bench.measure import Result
from processor.chunking import split_sentences
from processor.kafka.records import read_to_end
from processor.synthesis import SHORTEST_SENTENCE

if TYPE_CHECKING:
    from bench.run import Bench

#: The backend's chunk limit (with the cache on, chunks are single sentences below it).
TEXT_LIMIT = 300
WINDOW = 16
EDITED_SHARE = 0.01
#: Service time L at this many characters (the mean chunk is about this long).
PER_CHAR = 250
_PHRASE = (
    "the old house stood at the end of a long road where the river turned north and "
    "every evening a lamp burned in the window while rain moved softly over quiet fields"
)
WORDS = tuple(_PHRASE.split(" "))


def sentence(rng: random.Random) -> str:
    """40 to 140 characters of words, capitalised, ending with a full stop."""
    goal = rng.randint(40, 140)
    words: list[str] = []
    while len(" ".join(words)) < goal:
        words.append(rng.choice(WORDS))
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def book(chapters: int, sentences: int = 25, seed: int = 11) -> list[list[str]]:
    rng = random.Random(seed)
    return [[sentence(rng) for _ in range(sentences)] for _ in range(chapters)]


def edited(chapters: list[list[str]], share: float, seed: int = 5) -> tuple[list[list[str]], int]:
    """A copy with ``share`` of all sentences edited (one word replaced), and how many."""
    places = [(c, s) for c, chapter in enumerate(chapters) for s in range(len(chapter))]
    chosen = random.Random(seed).sample(places, max(1, round(share * len(places))))
    out = [list(chapter) for chapter in chapters]
    for n, (c, s) in enumerate(chosen):
        words = out[c][s].split(" ")
        words[len(words) // 2] = f"edited{n}"
        out[c][s] = " ".join(words)
    return out, len(chosen)


def records(prefix: str, chapters: list[list[str]]) -> list[tuple[bytes, bytes]]:
    """A request per chapter, seeded (the fake's kind samples randomly: unseeded would not
    be cached, the cache's safety rule)."""
    out = []
    for i, chapter in enumerate(chapters):
        rid = f"{prefix}-ch{i:03d}"
        body = {"request_id": rid, "text": " ".join(chapter), "seed": 1}
        out.append((rid.encode(), json.dumps(body).encode()))
    return out


def config(path: Path, url: str, window: int) -> Path:
    path.write_text(
        f'default_backend = "tts"\n\n[backends.tts]\nkind = "openai"\nurl = "{url}"\n'
        f"max_in_flight = {window}\nadaptive = false\ntext_limit = {TEXT_LIMIT}\n"
        "retry_attempts = 3\nretry_timeout_s = 60\n",
        encoding="utf-8",
    )
    return path


def ready_at(log: Path) -> float | None:
    """When the processor first held its partitions (its log's ``partitions assigned``)."""
    with log.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if '"partitions assigned"' in line:
                stamp = json.loads(line)["timestamp"].replace("Z", "+00:00")
                return dt.datetime.fromisoformat(stamp).timestamp()
    return None


def wall(self: Bench, result: Result) -> float:
    """Seconds from the moment the processor held its partitions (the requests were already
    waiting) to its last completion event: the work, without the process's start-up."""
    ready = ready_at(self.raw / f"cache.{result.label}.log")
    if not result.events or ready is None:
        return float("nan")
    return max(e.at for e in result.events) - ready


def calls(result: Result) -> int:
    found: int = result.backend.get("calls", 0)
    return found


async def cache(self: Bench) -> None:
    chapters = 10 if self.smoke else 100
    long_sentences = 60 if self.smoke else 150
    original = book(chapters)
    changed, n_edited = edited(original, EDITED_SHARE)
    prefix = f"cache-{self.run_id}"
    first, second = f"bench.{self.run_id}.cache.render", f"bench.{self.run_id}.cache.rerender"
    await self.kafka.create([first, second], 8)
    self.topics += [first, second]
    await self.kafka.produce(first, records(f"{prefix}-a", original))
    await self.kafka.produce(second, records(f"{prefix}-b", changed))
    cache_env = {
        "VOXLINE_CACHE": "true",
        "VOXLINE_CACHE_PREFIX": f"bench/{self.run_id}/cache-chunks/",
    }
    args = ("--capacity", "16", "--latency-ms", "250", "--per-char", str(PER_CHAR))
    async with self.fake("cache", *args) as fake:
        env = cache_env | {"VOXLINE_CONFIG": str(config(self.raw / "cache.toml", fake.url, WINDOW))}
        box: dict[str, Any] = dict(window=WINDOW, timebox_s=900.0, extra_env=env)
        one = await self.run("cache", first, chapters, "render", "voxline", fake, **box)
        two = await self.run("cache", second, chapters, "rerender", "voxline", fake, **box)
    self.say(
        f"cache: {chapters} chapters, {n_edited} sentences edited: calls {calls(one)} -> "
        f"{calls(two)}, wall {wall(self, one):.1f} s -> {wall(self, two):.1f} s"
    )
    self.row("cache", f"backend calls, book of {chapters} chapters", {"voxline": calls(one)},
             better="", digits=0)  # fmt: skip
    self.row(
        "cache", f"re-render, {n_edited} sentences (1 %) edited: calls / first render",
        {"voxline": calls(two) / max(1, calls(one))}, better="lower", target="≤ 0.02", digits=4,
    )  # fmt: skip
    self.row(
        "cache", "re-render: wall time / first render",
        {"voxline": wall(self, two) / wall(self, one)}, better="lower", target="≤ 0.10", digits=3,
    )  # fmt: skip
    await replay(self, long_sentences, cache_env)


async def _fail_the_last_call(fake: Fake, chunks: int) -> None:
    """Once the chapter's last chunk is about to be called, fail it and its two retries."""
    while True:
        stats = await fake.stats()
        if stats.get("calls", 0) >= chunks - 1:
            await fake.control(fail_first_n=3)
            return
        await asyncio.sleep(0.01)


async def replay(self: Bench, sentences: int, cache_env: dict[str, str]) -> None:
    chapter = book(1, sentences, seed=23)
    text = " ".join(chapter[0])
    chunks = len(split_sentences(text, TEXT_LIMIT, shortest=SHORTEST_SENTENCE))
    first, again = f"bench.{self.run_id}.cache.chapter", f"bench.{self.run_id}.cache.replayed"
    await self.kafka.create([first, again], 1)
    self.topics += [first, again]
    await self.kafka.produce(first, records(f"cache-{self.run_id}-long", chapter))
    args = ("--capacity", "16", "--latency-ms", "250", "--per-char", str(PER_CHAR))
    async with self.fake("cache-replay", *args) as fake:
        # Window 1: the chunks go one after the other, so the watcher has a whole service time
        # between the last-but-one call and the last to arm the failure.
        env = cache_env | {"VOXLINE_CONFIG": str(config(self.raw / "cache-2.toml", fake.url, 1))}
        box: dict[str, Any] = dict(window=1, timebox_s=300.0, extra_env=env)
        failing = asyncio.create_task(_fail_the_last_call(fake, chunks))
        try:
            one = await self.run("cache", first, 1, "chapter", "voxline", fake, **box)
        finally:
            failing.cancel()
        letters = await read_to_end(self.kafka.settings, f"bench.{self.run_id}.cache.chapter.dlq")
        if not letters:  # the watcher was late (a timing miss, not a processor fault)
            self.say("cache: the long chapter was not dead-lettered; no replay figure")
            return
        await self.kafka.produce(again, [(letters[0].key or b"", letters[0].value or b"")])
        box["backend"] = {"fail_first_n": 0}
        two = await self.run("cache", again, 1, "replay", "voxline", fake, **box)
    made = calls(one) - 3  # the failed call and its two retries made nothing
    self.say(f"cache: chapter of {chunks} chunks: {made} made, replay made {calls(two)}")
    self.row(
        "cache", f"dead-letter replay, chapter of {chunks} chunks, one failed: calls / chunks",
        {"voxline": calls(two) / chunks}, better="lower", target="≤ 0.02", digits=4,
    )  # fmt: skip
    self.row(
        "cache", "dead-letter replay: wall time / first render",
        {"voxline": wall(self, two) / wall(self, one)}, better="lower", target="≤ 0.10", digits=3,
    )  # fmt: skip
