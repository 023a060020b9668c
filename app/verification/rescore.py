"""Re-score a stored auction on a worker and compare the log-probs (`mosaic verify --rescore URL`).

Job: `rescore_checks(record, url)` → one `Check` per rule. From the record alone it rebuilds the exact
prompts (the reference prompt from the query; each advertiser's context prompt from her request
entry; the context-aware prompt of the `context` / `mixture` proposals, `app.prompts`), has the
worker at `url` tokenize them and score the candidates' recorded token ids in the same requests the
gateway sent (the record's `engine.scored` ranges), and draws every generation request again with its
recorded seed and share (`engine.generated`): the same tokens must come back, and their log q.
* The worker must be the announced model: its identity's `model` and `weights_sha256` equal every
  identity the record names, else `rescore.engine` fails naming the field.
* What an engine of the worker's identity (every field of `workers.identity`: build, dtype,
  threads, kernels, hardware class) scored or drew must agree BIT FOR BIT (float64 compared by its
  bits): log_ref, log_context[i], log_proposal and the redrawn tokens.
* What another identity scored (another CPU family, CPU vs GPU, other threads or dtype): within
  `tolerance` nats per reply token (default by the dtypes: `default_tolerance`, measured,
  docs/DESIGN.md § Verifiable auctions); `rescore.mode` says which case applied and the fields that
  differ. Draws may legitimately diverge there: a redrawn candidate whose tokens differ is noted.
  With several engines in one auction (`engine.scored` / `engine.generated` say which did what)
  each value is compared by its own engine's rule (`app.verification.rescore_compare`).
* A sealed view (`view: "sealed"`) re-scores what it allows: log π_ref under the reference prompt,
  her own log π_i, and the reference pool's draws; the others' prompts stay sealed (the context
  prompt names them), so log q of context draws and of a mixture are reported as not re-scored.
Every check names the first differing candidate and field, and the max |diff|.
Imports the engine client (`app.auction.engine_client`, `app.auction.engine_identity`), the prompts,
the mechanism's mixture density, `app.settings` and the pure comparisons
(`app.verification.rescore_compare`); see docs/DESIGN.md § Verifiable auctions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app import mechanism
from app.auction.engine_client import DrawParams, EngineClient, WorkerRequestError, derive_seed
from app.auction.engine_identity import read_identity
from app.auction.sampler import SEED_CONTEXT_DRAWS, SEED_REFERENCE_DRAWS
from app.auction.worker_dispatch import WorkersBusyError, WorkersUnavailableError
from app.contract.request import AdvertiserIn
from app.prompts import ChatMessage, advertiser_messages, context_messages, reference_messages
from app.settings import Settings
from app.verification.report import Check
from app.verification.rescore_compare import Strictness, compare_values, identity_checks

RESCORE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Replay:
    """What of the record a re-score uses, and how strictly it compares."""

    record: dict[str, Any]
    sealed: bool
    token_ids: list[list[int]]
    engine: dict[str, Any]
    strictness: Strictness  # per value: bit for bit (same engine identity) or the tolerance

    @property
    def candidates(self) -> list[dict[str, Any]]:
        return list(self.record.get("candidates") or [])

    @property
    def request(self) -> dict[str, Any]:
        return dict(self.record.get("request") or {})

    def sequence_tolerance(self, group: int, candidate: int) -> float | None:
        """How strictly candidate j's score under prompt `group` (0: reference, 1+i: advertiser i,
        1+n: context) compares: by the engine that scored it (a sealed view cannot place her own row
        in the batch: bit for bit only if every recorded engine is the worker's)."""
        if self.sealed and group > 0:
            return self.strictness.sequence(None)
        return self.strictness.sequence(group * len(self.token_ids) + candidate)

    def lengths(self) -> list[int]:
        """Each candidate's reply length in tokens (a tolerance is per token)."""
        return [len(ids) for ids in self.token_ids]

    def advertisers(self) -> list[dict[str, Any]]:
        """The advertisers whose prompts this view holds: everyone (full), or her own entry (sealed)."""
        if self.sealed:
            return [self.request["advertiser"]]
        return list(self.request.get("advertisers") or [])


async def rescore_checks(
    record: dict[str, Any], url: str, api_key: str | None = None, tolerance: float | None = None
) -> list[Check]:
    """Re-score `record` (a full record or a sealed view, as `GET /auctions/{id}` returns it) on the
    worker at `url`; one `Check` per rule (see the module docs). `tolerance`: nats per reply token
    allowed when the worker's identity differs from the record's (default `default_tolerance`)."""
    candidates = record.get("candidates") or []
    engine = record.get("engine")
    if record.get("no_fill") is not None:
        return [Check("rescore", True, "a no-fill: nothing was scored (one organic draw, no bids)")]
    if not engine:
        return [Check("rescore.engine", False, "the record has no `engine` (recorded before issue 35)")]
    token_ids = [candidate.get("token_ids") for candidate in candidates]
    missing = next((j for j, ids in enumerate(token_ids) if ids is None), None)
    if missing is not None or not candidates:
        return [Check("rescore.tokens", False, f"candidate {missing}: the record has no token_ids")]
    settings = Settings(
        worker_urls=[url],
        worker_api_key=api_key,
        served_model_name=None,
        worker_priority=False,
        worker_hedge=False,
        worker_retries=1,
        # an audit waits for its answers: no per-token budget, one generous ceiling per request
        worker_timeout_s=RESCORE_TIMEOUT_S,
        worker_timeout_base_s=RESCORE_TIMEOUT_S,
    )
    client = EngineClient(settings, [url])
    try:
        _, worker_identity, _ = await read_identity(client.clients[url])
        checks, strictness = identity_checks(engine, worker_identity, tolerance)
        if strictness is None:
            return checks
        replay = Replay(record, record.get("view") == "sealed", token_ids, engine, strictness)
        try:
            return checks + await _rescore(client, replay)
        except (WorkersUnavailableError, WorkersBusyError, WorkerRequestError) as error:
            return [*checks, Check("rescore.worker", False, f"the worker did not answer: {error}")]
        except (KeyError, IndexError, ValueError) as error:  # a record that is not one we wrote
            return [
                *checks,
                Check("rescore.record", False, f"malformed record: {type(error).__name__} {error}"),
            ]
    finally:
        await client.aclose()


async def _rescore(client: EngineClient, replay: Replay) -> list[Check]:
    """Tokenize the prompts, score the candidates, draw again; compare each field."""
    request, advertisers = replay.request, replay.advertisers()
    query = str(request["query"])
    profiles = [AdvertiserIn.model_validate(entry).profile() for entry in advertisers]
    proposal = str(replay.record.get("proposal") or request.get("proposal"))
    context_chat = None if replay.sealed else context_messages(query, profiles)
    chats: list[list[ChatMessage]] = [reference_messages(query)]
    chats += [advertiser_messages(query, profile) for profile in profiles]
    if proposal == "mixture" and context_chat is not None:
        chats.append(context_chat)
    prompts = [await client.tokenize_chat(chat) for chat in chats]
    rows = await _score_rows(client, replay, prompts)
    checks = [_compare_log_ref(replay, rows[0])]
    checks.append(
        _compare_log_context(replay, [str(a["id"]) for a in advertisers], rows[1 : 1 + len(profiles)])
    )
    context_ids = None
    if context_chat is not None and proposal != "reference":
        context_ids = prompts[-1] if proposal == "mixture" else await client.tokenize_chat(context_chat)
    draws = await _redraw(client, replay, prompts[0], context_ids)
    checks.append(_compare_draws(replay, draws))
    checks.append(_compare_log_proposal(replay, proposal, rows, draws, len(profiles)))
    return checks


async def _score_rows(client: EngineClient, replay: Replay, prompts: list[list[int]]) -> np.ndarray:
    """Every candidate under every prompt: (prompts, M). A full view sends the gateway's requests
    (`engine.scored`); a sealed view one request per prompt (rows are batch-invariant on our CPU path)."""
    m = len(replay.token_ids)
    sequences = [prompt + ids for prompt in prompts for ids in replay.token_ids]
    lengths = [len(prompt) for prompt in prompts for _ in replay.token_ids]
    chunks = sorted((int(a), int(b)) for _, a, b in replay.engine.get("scored", []))
    starts, stops = [a for a, _ in chunks], [b for _, b in chunks]
    if replay.sealed or not chunks or starts != [0, *stops[:-1]] or stops[-1] != len(sequences):
        chunks = [(g * m, (g + 1) * m) for g in range(len(prompts))]
    scores, _ = await client.score_chunks(sequences, lengths, chunks=chunks)
    return np.asarray(scores, dtype=np.float64).reshape(len(prompts), m)


def _compare_log_ref(replay: Replay, fresh: np.ndarray) -> Check:
    stored = [(f"candidate {j} log_ref", float(c["log_ref"])) for j, c in enumerate(replay.candidates)]
    strict = [replay.sequence_tolerance(0, j) for j in range(len(stored))]
    return compare_values("rescore.log_ref", stored, [float(x) for x in fresh], strict, replay.lengths())


def _compare_log_context(replay: Replay, advertiser_ids: list[str], fresh: np.ndarray) -> Check:
    stored: list[tuple[str, float]] = []
    strict: list[float | None] = []
    for i, aid in enumerate(advertiser_ids):
        for j, candidate in enumerate(replay.candidates):
            value = (candidate.get("log_context") or {}).get(aid)
            if value is None:
                return Check("rescore.log_context", False, f"candidate {j}: no log_context[{aid!r}] recorded")
            stored.append((f"candidate {j} log_context[{aid!r}]", float(value)))
            strict.append(replay.sequence_tolerance(1 + i, j))
    flat = [float(x) for row in fresh for x in row]
    tokens = replay.lengths() * len(advertiser_ids)
    return compare_values("rescore.log_context", stored, flat, strict, tokens)


@dataclass(frozen=True)
class Redrawn:
    """One recorded generation request drawn again: its candidates' range, tokens and log q."""

    first: int
    token_ids: list[list[int]]
    log_proposal: list[float]


async def _redraw(
    client: EngineClient, replay: Replay, reference_ids: list[int], context_ids: list[int] | None
) -> list[Redrawn] | str:
    """Each generation request of `engine.generated` again, with its seed and share (those whose
    prompt this view holds); a string says why none could be."""
    request, seed = replay.request, int(replay.record["seed"])
    redrawn: list[Redrawn] = []
    for _, share, first, stop in replay.engine.get("generated", []):
        pool = replay.candidates[first]["proposal"]
        prompt = reference_ids if pool == "reference" else context_ids
        if prompt is None:
            continue  # the context prompt names the other advertisers: sealed
        stream = SEED_REFERENCE_DRAWS if pool == "reference" else SEED_CONTEXT_DRAWS
        params = DrawParams(
            int(replay.engine["max_tokens"]),
            float(request.get("temperature", 1.0)),
            float(request.get("top_p", 1.0)),
        )
        stream_seed = derive_seed(seed, stream)
        drawn = await client.generate_share(
            prompt, stop - first, share, derive_seed(stream_seed, share), params
        )
        ids = [list(candidate.token_ids) for candidate in drawn]
        redrawn.append(Redrawn(first, ids, [candidate.log_proposal for candidate in drawn]))
    return redrawn or "no draw whose prompt this view holds (context draws: the context prompt is sealed)"


def _compare_draws(replay: Replay, draws: list[Redrawn] | str) -> Check:
    """The recorded tokens are what the recorded seeds draw: a failure with the same engine, a note
    with another (sampling may legitimately diverge on other kernels)."""
    if isinstance(draws, str):
        return Check("rescore.draws", True, f"not redrawn: {draws}")
    differing = [
        draw.first + k
        for draw in draws
        for k, ids in enumerate(draw.token_ids)
        if ids != replay.token_ids[draw.first + k]
    ]
    count = sum(len(draw.token_ids) for draw in draws)
    if not differing:
        return Check("rescore.draws", True, f"{count} candidates redrawn by their seeds: the same tokens")
    wrong = [j for j in differing if replay.strictness.draw(j) is None]  # the same engine drew it
    if wrong:
        detail = f"candidate {wrong[0]} token_ids: a redraw with its recorded seed gives other tokens"
        return Check("rescore.draws", False, f"{detail} ({len(wrong)} of {count} differ; same engine)")
    detail = f"candidates {differing} drew other tokens on another engine (sampling may diverge there)"
    return Check("rescore.draws", True, f"{detail}: noted, their log q not compared")


def _compare_log_proposal(
    replay: Replay, proposal: str, rows: np.ndarray, draws: list[Redrawn] | str, n: int
) -> Check:
    """log q: a mixture's from the re-scored context and reference rows (`mechanism`), a single
    proposal's from the redrawn samples whose tokens agree."""
    stored_all = [float(c["log_proposal"]) for c in replay.candidates]
    if proposal == "mixture":
        if replay.sealed:
            return Check(
                "rescore.log_proposal",
                True,
                "not re-scored: a mixture's log q needs the sealed context prompt",
            )
        share = sum(c["proposal"] == "context" for c in replay.candidates) / len(replay.candidates)
        fresh = mechanism.mixture_log_proposal(
            np.stack([rows[1 + n], rows[0]]), np.array([share, 1.0 - share])
        )
        stored = [(f"candidate {j} log_proposal", value) for j, value in enumerate(stored_all)]
        strict = [
            _stricter(replay.sequence_tolerance(0, j), replay.sequence_tolerance(1 + n, j))
            for j in range(len(stored))
        ]
        return compare_values(
            "rescore.log_proposal", stored, [float(x) for x in fresh], strict, replay.lengths()
        )
    pairs = [
        (draw.first + k, again)
        for draw in ([] if isinstance(draws, str) else draws)
        for k, again in enumerate(draw.log_proposal)
        if draw.token_ids[k] == replay.token_ids[draw.first + k]
    ]
    if not pairs:
        return Check("rescore.log_proposal", True, "not re-scored: no redrawn candidate (see rescore.draws)")
    stored = [(f"candidate {j} log_proposal", stored_all[j]) for j, _ in pairs]
    strict = [replay.strictness.draw(j) for j, _ in pairs]
    tokens = [replay.lengths()[j] for j, _ in pairs]
    return compare_values("rescore.log_proposal", stored, [again for _, again in pairs], strict, tokens)


def _stricter(left: float | None, right: float | None) -> float | None:
    """A value computed from two scores: bit for bit only if both are."""
    return None if left is None and right is None else max(t for t in (left, right) if t is not None)
