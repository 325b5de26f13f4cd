"""The output-length model keeps learning from outcomes: refitted on one replica, shared with all, never in the way.

Every replica, every `sync_interval_s`:
- adopts the newest version of the blob `predictor-model` when the store has one newer than the model it serves
  (parsed in a thread, swapped in with one assignment) and saves it to `model_path`;
- unless it holds the lease, publishes the outcomes it observed that the refitting replica has not confirmed yet,
  at most the latest `shared_outcomes`, as the blob `predictor-outcomes:<replica>` (JSON through zlib, never
  pickle: reading the store must not run code), which expires unless written again within `OUTBOX_TTL_S`, and
  announces itself with the stats entry `predictor:<replica>`.

The replica holding the lease `predictor` also:
- reads the outboxes of the replicas announced, buffers the outcomes it has not seen, and publishes how far it got
  in `predictor-seen`, so the others send only newer ones;
- refits when `refit_min_outcomes` new outcomes have arrived and `refit_min_interval_s` has passed since the last
  refit (or the start), whichever is later, in a niced worker process (`refit_executor`); the refit runs as a task,
  so the replica keeps ticking and keeps its lease meanwhile;
- publishes the result as the next version of `predictor-model` and saves it to `model_path`.

With the in-process store the single replica is its own lease holder and refits for itself. When Redis is
unreachable the store answers reads from its last copy, drops writes and grants no lease: every replica keeps
serving the model it has and nobody refits until Redis is back; a request never waits on any of this.
What is lost, by design: outcomes beyond `shared_outcomes` produced by one replica between two reads of the lease
holder (the model needs a sample of the traffic, not all of it), and the outcomes a lease holder had buffered from
others when it stops (the next holder starts from its own outcomes and what the others still hold). When the lease
moves and comes back, the holder still knows how far it read each replica (for FORGET_AFTER_S), so an outbox sent
anew is not counted twice; a holder that never held the lease before may read outcomes another holder had read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
import uuid
import zlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from ricardo.gateway.config import PredictorConfig
from ricardo.gateway.store import StateStore
from ricardo.predictor.features import FEATURE_VERSION, RequestFeatures
from ricardo.predictor.model import (
    DEFAULT_MODEL,
    FittedModel,
    OutputLengthPredictor,
    Sample,
    refit_executor,
    stop_executor,
)

log = logging.getLogger("ricardo.predictor")

LEASE = "predictor"
MODEL_BLOB = "predictor-model"
SEEN_BLOB = "predictor-seen"
OUTBOX_BLOB = "predictor-outcomes:"
ANNOUNCE = "predictor:"
RETRY_AFTER_FAILURE_S = 60.0  # a refit that failed is not retried sooner, whatever refit_min_interval_s says
# A lease holder forgets what it read of a replica unannounced this long (a restarted process has a new id), not
# at once: a replica that held the lease meanwhile did not announce itself, and sends its whole outbox anew
FORGET_AFTER_S = 600.0
# A replica's outbox expires this long after it was last written (every process is a new replica id: kept for good,
# outboxes would pile up in Redis deploy after deploy); a replica writes its own again before then, even unchanged
# (expired, the lease holder's copy would be written back, for good)
OUTBOX_TTL_S = FORGET_AFTER_S


def load_predictor(model_path: str | None) -> tuple[OutputLengthPredictor, str]:
    """The model saved at `model_path` if there is a compatible one there, else the shipped one; and which."""
    if model_path and Path(model_path).is_file():
        try:
            return OutputLengthPredictor.load(model_path), "file"
        except Exception as exc:  # a truncated or foreign file raises BadZipFile, EOFError, KeyError ...
            log.warning(
                "not using the saved output-length model %s (%s); starting from the shipped one", model_path, exc
            )
    return OutputLengthPredictor.load(DEFAULT_MODEL), "shipped"


class PredictorLearning:
    def __init__(
        self,
        predictor: OutputLengthPredictor,
        store: StateStore,
        settings: PredictorConfig,
        replica_id: str,
        registry: CollectorRegistry | None = None,
        source: str = "shipped",
    ):
        self.predictor = predictor
        self.store = store
        self.settings = settings
        self.replica_id = replica_id
        self.source = source  # where the served model came from: shipped, file, store, refit
        self.holder = False
        self.model_version = 0  # store version of the served model (0: not from the store)
        self.new_outcomes = 0  # outcomes since the last refit (own and other replicas')
        self.received = 0  # outcomes read from other replicas' outboxes
        self.refits = 0
        self.last_refit: dict | None = None
        self.saved_at: float | None = None
        # a new epoch per process: a restarted replica numbers its outcomes from 1 again
        self._epoch = uuid.uuid4().hex[:12]
        self._outbox: deque[tuple[int, Sample]] = deque(maxlen=max(1, settings.shared_outcomes))
        self._seq = self._published_seq = 0
        self._outbox_due = 0.0  # monotonic time by which the outbox is written again, changed or not
        self._seen: dict[str, list] = {}  # lease holder: replica -> [epoch, last sequence number read]
        self._announced_at: dict[str, float] = {}  # lease holder: replica -> when it was last announced
        self._outbox_versions: dict[str, int] = {}
        self._refused_version = 0  # a model blob this replica cannot read (another feature version)
        self._adopted = 0  # models adopted from the store (another replica's refits)
        self._unpublished: bytes | None = None  # a refit the store did not take (down): published at the next tick
        self._refit_clock = time.monotonic()  # the last refit (or the start)
        self._retry_at = 0.0  # monotonic time before which a failed refit is not tried again
        self._refit_task: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self._executor: ProcessPoolExecutor | None = None
        self._metrics = _Metrics(registry or CollectorRegistry())
        self._metrics.update(self)

    # -- request path ------------------------------------------------------------------------
    def observe(self, features: RequestFeatures, actual_output_tokens: int) -> None:
        """Count an outcome this replica observed (the predictor has buffered it) and queue it for sharing."""
        self.new_outcomes += 1
        if self.settings.shared_outcomes:
            self._seq += 1
            self._outbox.append((self._seq, (features, actual_output_tokens)))

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ricardo-predictor-learning")

    async def close(self) -> None:
        for task in (self._task, self._refit_task):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._task, self._refit_task) if t), return_exceptions=True)
        if self._executor is not None:
            stop_executor(self._executor)
        if self.holder:
            await self.store.release_lease(LEASE, self.replica_id)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bad tick must not end the loop
                log.exception("predictor sync failed")
            await asyncio.sleep(self.settings.sync_interval_s)

    async def tick(self) -> None:
        store, settings = self.store, self.settings
        self.holder = await store.acquire_lease(LEASE, self.replica_id, 3 * settings.sync_interval_s)
        if self.holder:
            await self._collect()
            if self._unpublished is not None:
                await self._publish(self._unpublished)
        await self._adopt()
        if not self.holder:
            await self._share_outbox()
        if self.holder and self._refit_task is None and self._due():
            self._refit_task = asyncio.create_task(self._refit(), name="ricardo-predictor-refit")
        self._metrics.update(self)

    # -- the model -------------------------------------------------------------------------------
    async def _adopt(self) -> None:
        blob = await self.store.get_blob(MODEL_BLOB)
        if blob is None:
            if self.holder and self.source == "file":  # a model learnt before a restart beats the shipped one
                await self._publish(await asyncio.to_thread(self.predictor.to_bytes))
            return
        version, data = blob
        if version <= self.model_version or version == self._refused_version:
            return
        try:
            model = await asyncio.to_thread(FittedModel.from_bytes, data)
        except Exception as exc:  # not only ValueError: a truncated blob raises BadZipFile, an empty one EOFError
            self._refused_version = version
            log.warning("not adopting output-length model version %d from the store: %s", version, exc)
            return
        self.predictor.use(model)
        self.model_version, self.source = version, "store"
        self._adopted += 1
        log.info("output-length model version %d from the store (%d samples)", version, model.info["samples"])
        await self._save(data)

    def _due(self) -> bool:
        settings = self.settings
        now = time.monotonic()
        return (
            settings.learn
            and self.new_outcomes >= settings.refit_min_outcomes
            and now - self._refit_clock >= settings.refit_min_interval_s
            and now >= self._retry_at
        )

    async def _refit(self) -> None:
        counted, started, adopted = self.new_outcomes, time.monotonic(), self._adopted
        try:
            if self._executor is None:
                self._executor = refit_executor(self.settings.worker_niceness)
            blob = await self.predictor.refit_async(self._executor)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("output-length refit failed; trying again in %.0f s at the earliest", RETRY_AFTER_FAILURE_S)
            self._retry_at = time.monotonic() + RETRY_AFTER_FAILURE_S
            if self._executor is not None:  # a broken worker pool stays broken: start a new one next time
                stop_executor(self._executor)
                self._executor = None
            return
        finally:
            self._refit_clock = time.monotonic()
            self._refit_task = None
        if not self.holder or self._adopted != adopted:
            # the lease moved during the refit (another replica's model may be in the store, adopted already): this
            # refit is neither published nor kept; the store's model is served again, as on every other replica
            log.info("output-length refit done after the lease moved: serving the store's model instead")
            self.model_version = 0
            await self._adopt()
            return
        self.new_outcomes -= counted
        self.refits += 1
        self.source = "refit"
        info = self.predictor.info
        self.last_refit = {
            "at": time.time(),
            "seconds": round(time.monotonic() - started, 3),
            "samples": info["samples"],
            "version": info["version"],
        }
        log.info(
            "output-length model refitted on %d samples in %.1f s (model version %d)",
            info["samples"],
            self.last_refit["seconds"],
            info["version"],
        )
        await self._publish(blob)
        await self._save(blob)
        self._metrics.update(self)

    async def _publish(self, blob: bytes) -> None:
        version = await self.store.put_blob(MODEL_BLOB, blob)
        self._unpublished = blob if version is None else None
        if version is not None:
            self.model_version = version

    async def _save(self, blob: bytes) -> None:
        if not self.settings.model_path:
            return
        try:
            await asyncio.to_thread(_write_atomically, Path(self.settings.model_path), blob)
            self.saved_at = time.time()
        except OSError as exc:
            log.warning("could not save the output-length model to %s: %s", self.settings.model_path, exc)

    # -- outcomes between replicas ------------------------------------------------------------------
    async def _share_outbox(self) -> None:
        if not self.settings.shared_outcomes:
            return
        interval = self.settings.sync_interval_s
        await self.store.push_stats(ANNOUNCE + self.replica_id, {"epoch": self._epoch, "seq": self._seq}, 3 * interval)
        if self._seq == self._published_seq and time.monotonic() < self._outbox_due:
            return
        seen = await self.store.get_blob(SEEN_BLOB)
        epoch, read_up_to = json.loads(seen[1]).get(self.replica_id, ["", 0]) if seen else ("", 0)
        floor = read_up_to if epoch == self._epoch else 0
        pending = [(seq, sample) for seq, sample in self._outbox if seq > floor]
        seq = self._seq
        data = await asyncio.to_thread(_encode_outbox, self._epoch, pending)
        if await self.store.put_blob(OUTBOX_BLOB + self.replica_id, data, ttl_s=OUTBOX_TTL_S) is not None:
            self._published_seq = seq
            self._outbox_due = time.monotonic() + OUTBOX_TTL_S / 2

    async def _collect(self) -> None:
        """Lease holder: buffer the outcomes of the other replicas that it has not read yet."""
        if not self.settings.shared_outcomes:
            return
        announced = [r[len(ANNOUNCE) :] for r in await self.store.pull_stats() if r.startswith(ANNOUNCE)]
        now = time.monotonic()
        self._announced_at.update(dict.fromkeys(announced, now))
        # forget replicas long unannounced (ids of restarted processes would pile up; see FORGET_AFTER_S)
        gone = {r for r, at in self._announced_at.items() if now - at > FORGET_AFTER_S}
        for replica in gone:
            del self._announced_at[replica]
        changed = bool(gone & self._seen.keys())
        self._seen = {r: v for r, v in self._seen.items() if r not in gone}
        self._outbox_versions = {r: v for r, v in self._outbox_versions.items() if r not in gone}
        for replica in announced:
            if replica == self.replica_id:
                continue
            blob = await self.store.get_blob(OUTBOX_BLOB + replica)
            if blob is None or self._outbox_versions.get(replica) == blob[0]:
                continue
            self._outbox_versions[replica] = blob[0]
            try:
                epoch, outcomes = await asyncio.to_thread(_decode_outbox, blob[1])
            except (ValueError, TypeError, KeyError, zlib.error) as exc:
                log.warning("skipping the unreadable outcomes of replica %s: %s", replica, exc)
                continue
            last_epoch, read_up_to = self._seen.get(replica, ["", 0])
            floor = read_up_to if epoch == last_epoch else 0
            fresh = [sample for seq, sample in outcomes if seq > floor]
            if outcomes:
                self._seen[replica] = [epoch, max(seq for seq, _ in outcomes)]
                changed = True
            self.predictor.add_outcomes(fresh)
            self.new_outcomes += len(fresh)
            self.received += len(fresh)
        if changed:
            await self.store.put_blob(SEEN_BLOB, json.dumps(self._seen).encode())

    # -- admin ---------------------------------------------------------------------------------------
    def status(self) -> dict:
        settings = self.settings
        return {
            "role": "refitter" if self.holder else "follower",
            "learn": settings.learn,
            "source": self.source,
            "store_version": self.model_version or None,
            "refits": self.refits,
            "refitting": self._refit_task is not None,
            "last_refit": self.last_refit,
            "outcomes_since_refit": self.new_outcomes,
            "outcomes_from_other_replicas": self.received,
            "refit_after": {"outcomes": settings.refit_min_outcomes, "seconds": settings.refit_min_interval_s},
            "model_path": settings.model_path,
            "saved_at": self.saved_at,
        }


class _Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.version = Gauge(
            "ricardo_predictor_model_version",
            "Version of the output-length model in use.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.samples = Gauge(
            "ricardo_predictor_model_samples",
            "Samples the output-length model was fitted on.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.refitter = Gauge(
            "ricardo_predictor_refitter",
            "1 on the replica that refits the output-length model.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.refits = Counter(
            "ricardo_predictor_refits", "Refits of the output-length model on this replica.", registry=registry
        )
        self._refits = 0

    def update(self, learning: PredictorLearning) -> None:
        info = learning.predictor.info
        self.version.set(info.get("version", 0))
        self.samples.set(info.get("samples", 0))
        self.refitter.set(1 if learning.holder else 0)
        self.refits.inc(learning.refits - self._refits)
        self._refits = learning.refits


def _encode_outbox(epoch: str, outcomes: list[tuple[int, Sample]]) -> bytes:
    rows = [[seq, features.to_record(), actual] for seq, (features, actual) in outcomes]
    document = {"epoch": epoch, "feature_version": FEATURE_VERSION, "outcomes": rows}
    return zlib.compress(json.dumps(document).encode(), 1)


def _decode_outbox(data: bytes) -> tuple[str, list[tuple[int, Sample]]]:
    """The epoch and outcomes of an outbox; ValueError if its features are another version's (a replica of
    another release, during a rolling deploy: its records would train this model on features it does not use)."""
    doc = json.loads(zlib.decompress(data))
    if doc.get("feature_version") != FEATURE_VERSION:
        raise ValueError(f"outcomes with features v{doc.get('feature_version')}, not v{FEATURE_VERSION}")
    return str(doc["epoch"]), [
        (int(seq), (RequestFeatures.from_record(record), int(actual))) for seq, record, actual in doc["outcomes"]
    ]


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a model behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", delete=False) as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(out.name, path)
