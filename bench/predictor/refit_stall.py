"""How long does a refit stall the event loop's predictions?

    python bench/predictor/refit_stall.py [--outcomes 5000]

Loads the shipped predictor, buffers OUTCOMES outcomes (ShareGPT and GSM8K prompts with their real output
lengths), then keeps calling predict() on the event loop, yielding between calls, while a refit runs
(a) nowhere (reference), (b) in a thread via loop.run_in_executor(None, predictor.refit), and
(c) in a worker process via predictor.refit_async(refit_executor()). Prints the largest and 99th-percentile
gap between consecutive predictions and the refit's wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time

import numpy as np
from ricardo.predictor.datasets import gsm8k_rows, sharegpt_rows
from ricardo.predictor.features import features_from_body
from ricardo.predictor.model import OutputLengthPredictor, refit_executor, stop_executor
from ricardo.predictor.tokens import InputTokenCounter


async def predict_while(predictor: OutputLengthPredictor, requests: list, refit) -> dict:
    gaps: list[float] = []
    done = asyncio.Event()

    async def predicting() -> None:
        last = time.perf_counter()
        for features in itertools.cycle(requests):
            predictor.predict(features)
            await asyncio.sleep(0)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            if done.is_set():
                return

    task = asyncio.create_task(predicting())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await refit()
    refit_seconds = time.perf_counter() - started
    done.set()
    await task
    return {
        "refit_s": refit_seconds,
        "max_gap_ms": max(gaps) * 1e3,
        "p99_gap_ms": float(np.percentile(gaps, 99)) * 1e3,
        "predictions": len(gaps),
    }


async def main(outcomes: int) -> None:
    counter = InputTokenCounter("llama3")
    rows = sharegpt_rows(True) + gsm8k_rows("test") + gsm8k_rows("train")
    samples = []
    for row in rows[:outcomes]:
        body = {"model": "bench", "messages": [{"role": "user", "content": row["prompt"]}]}
        samples.append((features_from_body(body, counter.count_body(body)), row["output_tokens"]))
    predictor = OutputLengthPredictor.load_default()
    for features, actual in samples:
        predictor.observe(features, actual)
    requests = [features for features, _ in samples[:500]]
    print(f"training set: {len(predictor.training_set())} samples ({outcomes} buffered + reservoir)")

    async def nothing() -> None:
        await asyncio.sleep(1.0)

    async def in_thread() -> None:
        await asyncio.get_running_loop().run_in_executor(None, predictor.refit)

    # what the gateway uses: one worker at a lower CPU priority, so on a small machine the event loop wins the CPU
    pool = refit_executor()
    try:
        pool.submit(int).result()  # start the worker before measuring

        async def in_process() -> None:
            await predictor.refit_async(pool)
            # the worker has imported numpy/scipy/sklearn now: the second run is the steady state

        for name, refit in (
            ("no refit (1 s)", nothing),
            ("thread", in_thread),
            ("process, first", in_process),
            ("process", in_process),
        ):
            result = await predict_while(predictor, requests, refit)
            print(
                f"{name:<16} refit {result['refit_s']:6.2f} s   max gap {result['max_gap_ms']:8.2f} ms   "
                f"p99 gap {result['p99_gap_ms']:6.3f} ms   predictions {result['predictions']}"
            )
    finally:
        stop_executor(pool)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outcomes", type=int, default=5000)
    asyncio.run(main(parser.parse_args().outcomes))
