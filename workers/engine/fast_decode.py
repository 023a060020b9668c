"""The engine's fast decode path: a static KV cache, one request's decode batch and CUDA graphs
around the functional Llama forward of :mod:`workers.engine.llama`. Imports torch, that module,
:mod:`workers.engine.invariant` and :mod:`workers.engine.invariant_batch` only (the decode loops that
drive it are :mod:`workers.engine.generate`'s). See docs/DESIGN.md (the worker engine).

Why: a transformers forward pass launches ~20 kernels per layer from Python. For a 7B model on an
H100 that is ~25 ms of CPU time per decode step against ~5 ms of GPU work (the weights read once),
so decoding was launch bound. Here one decode step of the whole batch is one CUDA-graph replay.

What this module does:

* :class:`FastDecoder` — a KV pool allocated once and reused: each request's cache is a view
  ``[rows, kv_heads, capacity, head_dim]`` per layer into it, so CUDA graphs captured for one
  request are valid for the next one of the same shape. The prompt is prefilled once (row 0) and its
  keys/values are copied to the other rows (the ``n`` samples share it).
* :class:`DecodeBatch` — one request: ``prefill`` then ``launch(tokens)`` per step (writes the new
  token's K/V at its position, attends to the cache, leaves the last-position logits in a static
  buffer).

CUDA graphs (``graphs=True``): one graph per (batch bucket, cache capacity, attention window). The
batch is rounded up to a bucket (``BATCH_BUCKETS``; extra rows are computed and ignored), the cache
capacity and the attention window to multiples of ``KV_ALIGN`` positions; positions beyond the
current one are masked. A graph is captured the first time its shape is needed (warm-up run first,
which is idempotent: it writes the same K/V and logits the replay writes again) and replayed from
then on. If capture fails the step runs eagerly (same numbers) and graphs stay off for this decoder.

Without graphs (CPU, or ``WORKER_DECODE=eager``) the same forward runs eagerly with exact shapes,
and finished rows are dropped from the batch (``keep``), as the transformers loop did. With bf16
weights on CPU ``begin`` returns an :class:`workers.engine.invariant_batch.InvariantBatch`: the
batch-invariant forward scoring uses too, so every sampled log-prob is the teacher-forced score's bits.
On CUDA (graphs, bucketed rows, cuBLAS kernels chosen per shape) agreement is to bf16 rounding only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from workers.engine.invariant import InvariantRunner
from workers.engine.invariant_batch import InvariantBatch
from workers.engine.llama import KV_ALIGN, KVCache, LlamaRunner

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)
MAX_GRAPHS = 256  # captured graphs kept per decoder (all are dropped beyond that)


def bucket_rows(n: int) -> int:
    """The batch bucket of ``n`` rows (graphs are captured per bucket)."""
    for size in BATCH_BUCKETS:
        if size >= n:
            return size
    return n


def align(positions: int) -> int:
    return -(-positions // KV_ALIGN) * KV_ALIGN


class DecodeBatch:
    """One request's decode state: rows, KV views, position, the static input and logits buffers."""

    def __init__(
        self,
        decoder: FastDecoder,
        n: int,
        rows: int,
        capacity: int,
        kv: KVCache,
        inputs: torch.Tensor,
        logits: torch.Tensor,
        position: torch.Tensor,
    ) -> None:
        self.decoder = decoder
        self.n = n
        self.rows = rows  # rows computed per step (≥ n with graphs: the bucket)
        self.capacity = capacity
        self.kv = kv
        self.inputs = inputs  # [rows] long: the token each row feeds into the next step
        self.logits_buf = logits  # [rows, V] fp32: the last step's logits
        self.position_buf = position  # 0-dim long: the position the next step writes
        self.position = 0  # host copy
        self.compact = not decoder.graphs and not decoder.overlap
        self.prefix: KVCache | None = None  # fp32 copy of the shared prompt's K/V (CPU low precision)

    def prefill(self, prompt: list[int]) -> torch.Tensor:
        """Prefill the prompt once (row 0), copy its K/V to every row; fp32 logits [1, V]."""
        runner = self.decoder.runner
        length = len(prompt)
        ids = torch.tensor([prompt], dtype=torch.long, device=runner.device)
        hidden = runner.prefill(ids, self.kv)
        if runner.cpu_low_precision and not self.decoder.bucketed:
            # Rows attend to the prompt through one shared fp32 copy (see LlamaRunner._attend_fp32).
            self.prefix = [
                (
                    keys[0, :, :length].to(torch.float32, copy=True),
                    values[0, :, :length].to(torch.float32, copy=True),
                )
                for keys, values in self.kv
            ]
        elif self.rows > 1:
            for keys, values in self.kv:
                keys[1 : self.rows, :, :length] = keys[0:1, :, :length]
                values[1 : self.rows, :, :length] = values[0:1, :, :length]
        self.position = length
        self.decoder.stats_forward()
        return runner.logits(hidden)

    def launch(self, tokens: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        """Queue one decode step: ``tokens`` are fed for ``rows`` (device index; None: the first
        ``len(tokens)`` rows). The logits land in :meth:`logits` (asynchronously on CUDA)."""
        if self.position >= self.capacity:
            raise RuntimeError(f"decode past the cache capacity ({self.capacity})")
        if rows is None:
            self.inputs[: tokens.shape[0]].copy_(tokens)
        else:
            self.inputs.index_copy_(0, rows, tokens)
        self.position_buf.fill_(self.position)
        self.decoder.run_step(self)
        self.position += 1

    def logits(self, rows: torch.Tensor | None = None, count: int | None = None) -> torch.Tensor:
        """The last step's logits of ``rows`` (device index) or of the first ``count`` rows."""
        if rows is not None:
            return self.logits_buf.index_select(0, rows)
        return self.logits_buf[: count if count is not None else self.n]

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in ``rows`` (ascending): the kept rows move to the front."""
        if not self.compact:
            raise RuntimeError("rows are only dropped when decoding without graphs")
        if rows == list(range(len(rows))):
            self.rows = len(rows)
            return
        index = torch.tensor(rows, dtype=torch.long, device=self.inputs.device)
        start = self.prefix[0][0].shape[1] if self.prefix is not None else 0  # the shared prompt stays
        end = self.position
        for keys, values in self.kv:
            keys[: len(rows), :, start:end] = keys[:, :, start:end].index_select(0, index)
            values[: len(rows), :, start:end] = values[:, :, start:end].index_select(0, index)
        self.rows = len(rows)

    def step_body(self, window: int, masked: bool) -> Callable[[], None]:
        runner = self.decoder.runner
        rows = self.rows
        kv = self.kv
        prefix = self.prefix
        inputs, position, out = self.inputs, self.position_buf, self.logits_buf

        def body() -> None:
            hidden = runner.decode(inputs[:rows], position, kv, window, masked, prefix)
            out[:rows].copy_(runner.logits(hidden))

        return body


class FastDecoder:
    """Static-cache decoding for one model: the KV pool, static buffers and captured graphs.

    ``graphs``: capture one CUDA graph per step shape (CUDA only). ``overlap``: the engine queues the
    next step before it reads the sampled tokens back (no row dropping; on by default on CUDA).
    ``bucketed``: round rows / capacity / attention window up to buckets (what graphs need; on by
    default with graphs, settable on CPU to run the graph-shaped code in tests). ``fuse``: one matrix
    for q/k/v and one for gate/up (default: on CUDA and for bf16/fp16 on CPU).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        graphs: bool | None = None,
        overlap: bool | None = None,
        bucketed: bool | None = None,
        fuse: bool | None = None,
        on_forward: Callable[[], None] | None = None,
    ) -> None:
        device = next(model.parameters()).device
        cuda = device.type == "cuda"
        # Fused q/k/v and gate/up products (fewer, larger GEMMs) on CUDA and for bf16/fp16 on CPU,
        # where decoding and scoring share the batch-invariant forward (both see the same fused
        # products; a tiled product's row bits do not depend on its output width). Not for fp32 on
        # CPU: the transformers forward's own products keep decoding bit-identical to the legacy loop.
        low_precision_cpu = not cuda and next(model.parameters()).dtype in (torch.bfloat16, torch.float16)
        self.runner = LlamaRunner(model, fuse=(cuda or low_precision_cpu) if fuse is None else fuse)
        self.device = self.runner.device
        self.graphs = bool(graphs if graphs is not None else cuda) and cuda
        self.overlap = bool(overlap if overlap is not None else cuda)
        self.bucketed = bool(bucketed if bucketed is not None else self.graphs)
        # bf16/fp16 on CPU: the batch-invariant forward, shared with scoring (see invariant.py).
        self.invariant = (
            InvariantRunner(self.runner) if self.runner.cpu_low_precision and not self.bucketed else None
        )
        self._on_forward = on_forward
        self._pool: torch.Tensor | None = None
        self._buffers: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._graphs: dict[tuple[int, int, int], torch.cuda.CUDAGraph] = {}
        self._graph_pool: Any = None
        self.captures = 0
        self.replays = 0
        self.graph_error: str | None = None

    def stats_forward(self) -> None:
        if self._on_forward is not None:
            self._on_forward()

    def begin(self, prompt_len: int, n: int, max_tokens: int) -> DecodeBatch | InvariantBatch:
        """A batch for ``n`` samples of a ``prompt_len``-token prompt decoding ``max_tokens`` tokens."""
        if self.invariant is not None:
            return InvariantBatch(self.invariant, n, max_tokens, self._on_forward)
        rows = bucket_rows(n) if self.bucketed else n
        needed = prompt_len + max_tokens
        capacity = align(needed) if self.bucketed else needed
        kv = self._kv(rows, capacity)
        inputs, logits, position = self._static_buffers(rows)
        inputs.zero_()
        return DecodeBatch(self, n, rows, capacity, kv, inputs, logits, position)

    def _kv(self, rows: int, capacity: int) -> KVCache:
        r = self.runner
        shape = (r.num_layers, 2, rows, r.num_kv_heads, capacity, r.head_dim)
        size = 1
        for dim in shape:
            size *= dim
        keep_pool = self.device.type == "cuda"  # graphs hold its address; CPU memory is returned
        pool = self._pool
        if pool is None or pool.numel() < size:
            self._graphs.clear()  # they point into the old pool
            self._pool = pool = None
            # Bucketed shapes: zeroed, masked positions are still read (weight 0), and 0 x NaN from
            # uninitialised memory would poison the attention (later requests leave finite values
            # behind). Exact windows read only written positions: no need to zero 20+ MB per request.
            allocate = torch.zeros if self.bucketed else torch.empty
            pool = allocate(size, dtype=r.dtype, device=self.device)
            if keep_pool:
                self._pool = pool
        view = pool[:size].view(shape)
        return [(view[layer, 0], view[layer, 1]) for layer in range(r.num_layers)]

    def _static_buffers(self, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        buffers = self._buffers.get(rows)
        if buffers is None:
            buffers = (
                torch.zeros(rows, dtype=torch.long, device=self.device),
                torch.zeros((rows, self.runner.vocab_size), dtype=torch.float32, device=self.device),
                torch.zeros((), dtype=torch.long, device=self.device),
            )
            if self.device.type == "cuda":
                self._buffers[rows] = buffers  # graphs read and write these addresses
        return buffers

    def run_step(self, batch: DecodeBatch) -> None:
        self.stats_forward()
        if self.bucketed:
            window = min(align(batch.position + 1), batch.capacity)
            body = batch.step_body(window, masked=True)
        else:
            window = batch.position + 1
            body = batch.step_body(window, masked=False)
        if not self.graphs:
            body()
            return
        key = (batch.rows, batch.capacity, window)
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._capture(body)
            if graph is None:
                body()
                return
            if len(self._graphs) >= MAX_GRAPHS:
                self._graphs.clear()
            self._graphs[key] = graph
        graph.replay()
        self.replays += 1

    def _capture(self, body: Callable[[], None]) -> torch.cuda.CUDAGraph | None:
        """Warm up ``body`` on a side stream (it is idempotent), then capture it; None on failure."""
        try:
            stream = torch.cuda.Stream(device=self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                body()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            if self._graph_pool is None:
                self._graph_pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls of other threads (the server's) cannot invalidate the capture.
            with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
                body()
            self.captures += 1
            return graph
        except Exception as error:  # pragma: no cover - CUDA only
            self.graph_error = f"{type(error).__name__}: {error}"
            log.warning("CUDA graph capture failed, decoding eagerly from now on: %s", self.graph_error)
            self.graphs = False
            self._graphs.clear()
            torch.cuda.synchronize(self.device)
            return None
