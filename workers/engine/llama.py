"""The fast decode path's model: :class:`LlamaRunner`, a functional forward of a transformers
``LlamaForCausalLM`` over its own weights (prefill and one-token decode steps into a caller's KV
cache), and :func:`unsupported_reason` (which models it can run). Imports torch only; the KV pool,
batches and CUDA graphs around it are :mod:`workers.engine.fast_decode` (which says why).

* :class:`LlamaRunner` — the forward pass of a ``LlamaForCausalLM`` written with plain tensor ops
  over the model's own weights (no copies; q/k/v and gate/up are fused into one matrix each, the
  model's ``nn.Linear`` weights become views into them, so the transformers forward used for scoring
  reads the same memory). The same math as transformers' Llama (RMSNorm in fp32, rotary embedding,
  SDPA with the same scale), so on CPU in fp32 it agrees with it to float rounding.

With bf16 weights on CPU the decode attention is a plain fp32 product instead of the CPU flash kernel
(4x faster for a few rows), and the prompt's K/V can be kept once, in fp32, for all rows (cascade
attention, :meth:`LlamaRunner._attend_fp32`).
See docs/DESIGN.md (the worker engine) for the invariants and figures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

KV_ALIGN = 64  # cache capacities and attention windows are multiples of this (graph reuse)
_RUNTIME_ROPE = ("dynamic", "longrope")  # rope types whose frequencies depend on the sequence length
_FUSED_ATTR = "_mosaic_fused_layers"


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot use the fast path (None: it can)."""
    name = type(model).__name__
    if name != "LlamaForCausalLM":
        return f"architecture {name} (fast path: LlamaForCausalLM)"
    inner = getattr(model, "model", None)
    rotary = getattr(inner, "rotary_emb", None)
    if rotary is None or not isinstance(getattr(rotary, "inv_freq", None), torch.Tensor):
        return "no rotary embedding module with inv_freq"
    rope_type = str(getattr(rotary, "rope_type", "default"))
    if any(kind in rope_type for kind in _RUNTIME_ROPE):
        return f"rope type {rope_type!r} changes with the sequence length"
    config = model.config
    if getattr(config, "sliding_window", None):
        return "sliding-window attention"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    return None


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm, op for op."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _fuse(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for several linears on the same input; their weights become views."""
    with torch.no_grad():
        weight = torch.cat([lin.weight.detach() for lin in linears], dim=0)
        biases = [lin.bias for lin in linears]
        bias = (
            torch.cat([b.detach() for b in biases if b is not None])
            if all(b is not None for b in biases)
            else None
        )
        start = 0
        for lin in linears:
            rows = lin.weight.shape[0]
            lin.weight.data = weight[start : start + rows]
            if bias is not None and lin.bias is not None:
                lin.bias.data = bias[start : start + rows]
            start += rows
    if bias is None and any(b is not None for b in biases):
        raise ValueError("mixed bias / no-bias linears cannot be fused")
    return weight, bias


@dataclass
class _Layer:
    qkv: list[torch.Tensor]  # [q, k, v] weights, or one fused weight
    qkv_bias: list[torch.Tensor | None]
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate_up: list[torch.Tensor]  # [gate, up] weights, or one fused weight
    gate_up_bias: list[torch.Tensor | None]
    down: torch.Tensor
    down_bias: torch.Tensor | None
    ln_attn: torch.Tensor
    eps_attn: float
    ln_mlp: torch.Tensor
    eps_mlp: float
    act: Callable[[torch.Tensor], torch.Tensor]


KVCache = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [rows, kv_heads, S, head_dim]


def _layers(model: nn.Module, inner: Any, fuse: bool) -> list[_Layer]:
    """Every decoder layer's weights (views, no copies); ``fuse``: one q/k/v and one gate/up matrix
    each, which the model's own linears then view too (fused once per model)."""
    fused: list[Any] = getattr(model, _FUSED_ATTR, None) or []
    if fuse and len(fused) != len(inner.layers):
        fused = [
            (
                _fuse([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]),
                _fuse([layer.mlp.gate_proj, layer.mlp.up_proj]),
            )
            for layer in inner.layers
        ]
        setattr(model, _FUSED_ATTR, fused)  # the model's linears now view these (no extra memory)
    layers: list[_Layer] = []
    for index, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        if fuse:
            (qkv, qkv_bias), (gate_up, gate_up_bias) = fused[index]
            qkv_w, qkv_b, gu_w, gu_b = [qkv], [qkv_bias], [gate_up], [gate_up_bias]
        else:  # the transformers forward's own matrix products (bit-identical on CPU)
            qkv_w = [attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]
            qkv_b = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
            gu_w = [mlp.gate_proj.weight, mlp.up_proj.weight]
            gu_b = [mlp.gate_proj.bias, mlp.up_proj.bias]
        layers.append(
            _Layer(
                qkv=qkv_w,
                qkv_bias=qkv_b,
                o=attn.o_proj.weight,
                o_bias=attn.o_proj.bias,
                gate_up=gu_w,
                gate_up_bias=gu_b,
                down=mlp.down_proj.weight,
                down_bias=mlp.down_proj.bias,
                ln_attn=layer.input_layernorm.weight,
                eps_attn=float(layer.input_layernorm.variance_epsilon),
                ln_mlp=layer.post_attention_layernorm.weight,
                eps_mlp=float(layer.post_attention_layernorm.variance_epsilon),
                act=mlp.act_fn,
            )
        )
    return layers


class LlamaRunner:
    """The forward pass of a transformers ``LlamaForCausalLM`` over its own weights (no copies)."""

    def __init__(self, model: nn.Module, fuse: bool = False) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"fast path unsupported: {reason}")
        hf: Any = model
        config = hf.config
        inner: Any = hf.model
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(getattr(config, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.num_heads)
        self.groups = self.num_heads // self.num_kv_heads
        first_attn = inner.layers[0].self_attn
        self.scale = float(getattr(first_attn, "scaling", self.head_dim**-0.5))
        self.embed: torch.Tensor = inner.embed_tokens.weight
        self.norm: torch.Tensor = inner.norm.weight
        self.norm_eps = float(inner.norm.variance_epsilon)
        head = hf.get_output_embeddings()
        self.lm_head: torch.Tensor = head.weight
        self.lm_head_bias: torch.Tensor | None = head.bias
        rotary = inner.rotary_emb
        self.inv_freq: torch.Tensor = rotary.inv_freq
        self.rope_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        # bf16/fp16 on CPU: decode attention in fp32 arithmetic (see _attend_fp32); fp32 on CPU keeps
        # transformers' own SDPA call (decoding bit-identical to the transformers loop).
        self.cpu_low_precision = self.device.type == "cpu" and self.dtype != torch.float32
        self.num_layers = len(inner.layers)
        self.vocab_size = int(self.lm_head.shape[0])
        self.fused = fuse
        self.layers = _layers(model, inner, fuse)
        self._arange = torch.arange(
            int(getattr(config, "max_position_embeddings", 4096)) + KV_ALIGN, device=self.device
        )

    # ------------------------------------------------------------------------------------ pieces
    def kv_bytes_per_position(self) -> int:
        """Bytes of K and V per token position and batch row (all layers)."""
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [rows, T, head_dim] of positions [rows, T] (transformers' formula)."""
        freqs = positions[..., None].float() * self.inv_freq.to(dtype=torch.float32)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.rope_scaling
        sin = emb.sin() * self.rope_scaling
        return cos.to(self.dtype), sin.to(self.dtype)

    def _qkv(
        self, layer: _Layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, length, _ = x.shape
        h = _rms_norm(x, layer.ln_attn, layer.eps_attn)
        if len(layer.qkv) == 1:
            q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
            qkv = F.linear(h, layer.qkv[0], layer.qkv_bias[0])
            q, k, v = qkv.split((q_size, kv_size, kv_size), dim=-1)
        else:
            q, k, v = (F.linear(h, w, b) for w, b in zip(layer.qkv, layer.qkv_bias, strict=True))
        q = q.view(rows, length, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(rows, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(rows, length, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = (q * cos) + (_rotate_half(q) * sin)
        k = (k * cos) + (_rotate_half(k) * sin)
        return q, k, v

    def _finish_layer(self, layer: _Layer, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        x = x + F.linear(attn, layer.o, layer.o_bias)
        h = _rms_norm(x, layer.ln_mlp, layer.eps_mlp)
        if len(layer.gate_up) == 1:
            gate, up = F.linear(h, layer.gate_up[0], layer.gate_up_bias[0]).chunk(2, dim=-1)
            inner = layer.act(gate) * up
        else:
            gate_w, up_w = layer.gate_up
            gate_b, up_b = layer.gate_up_bias
            inner = layer.act(F.linear(h, gate_w, gate_b)) * F.linear(h, up_w, up_b)
        return x + F.linear(inner, layer.down, layer.down_bias)

    def _attend_fp32(
        self,
        q: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None,
        prefix: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One query per row, in fp32 arithmetic over low-precision K/V: [rows, 1, heads·head_dim].

        Why: PyTorch's CPU flash-attention kernel costs ~0.6 ms per call for 8 bf16 rows (it is
        built for long queries); this is ~0.15 ms, with the kernel's own fp32 accumulation.
        ``prefix``: fp32 K/V of the first P positions, shared by all rows — every row's queries meet
        it in one product (cascade attention), so the shared prompt is read once per step, not once
        per row, and never converted again; one softmax spans prefix and own positions."""
        rows, window = q.shape[0], keys.shape[2]
        # The query heads of one KV head are its query rows (GQA without repeating K/V).
        grouped = q.reshape(rows, self.num_kv_heads, self.groups, self.head_dim).float()
        shared = 0 if prefix is None else prefix[0].shape[1]
        own_keys = keys[:, :, shared:].float()
        scores = torch.matmul(grouped, own_keys.transpose(-1, -2))  # [rows, kv_heads, groups, W - P]
        if prefix is not None:
            prefix_keys = prefix[0]
            # [kv_heads, rows·groups, head_dim] x [kv_heads, head_dim, P]
            stacked = grouped.permute(1, 0, 2, 3).reshape(self.num_kv_heads, rows * self.groups, -1)
            prefix_scores = torch.bmm(stacked, prefix_keys.transpose(1, 2))
            prefix_scores = prefix_scores.view(self.num_kv_heads, rows, self.groups, shared)
            scores = torch.cat((prefix_scores.permute(1, 0, 2, 3), scores), dim=-1)
        scores.mul_(self.scale)
        if mask is not None:
            scores = scores.masked_fill(~mask.view(1, 1, 1, window), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        attn = torch.matmul(weights[..., shared:], values[:, :, shared:].float())
        if prefix is not None:
            prefix_weights = weights[..., :shared].permute(1, 0, 2, 3).reshape(self.num_kv_heads, -1, shared)
            from_prefix = torch.bmm(prefix_weights, prefix[1])  # [kv_heads, rows·groups, head_dim]
            attn = attn + from_prefix.view(self.num_kv_heads, rows, self.groups, -1).permute(1, 0, 2, 3)
        return attn.to(q.dtype).reshape(rows, 1, -1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits of final-normed hidden rows [..., H]."""
        return F.linear(hidden, self.lm_head, self.lm_head_bias).float()

    # ------------------------------------------------------------------------------------ passes
    def prefill(self, ids: torch.Tensor, kv: KVCache) -> torch.Tensor:
        """Prompt ``ids`` [rows, T] from position 0: K/V into ``kv[:, :, :T]``; returns hidden [rows, H]
        of the last position (final norm applied)."""
        rows, length = ids.shape
        x = F.embedding(ids, self.embed)
        positions = torch.arange(length, device=ids.device)[None, :]
        cos, sin = self._rope(positions)
        for layer, (keys, values) in zip(self.layers, kv, strict=True):
            q, k, v = self._qkv(layer, x, cos, sin)
            keys[:rows, :, :length] = k
            values[:rows, :, :length] = v
            # As transformers' SDPA path: attend to the cache's view, GQA inside the kernel.
            attn = F.scaled_dot_product_attention(
                q,
                keys[:rows, :, :length],
                values[:rows, :, :length],
                is_causal=length > 1,
                scale=self.scale,
                enable_gqa=self.groups > 1,
            )
            x = self._finish_layer(layer, x, attn.transpose(1, 2).reshape(rows, length, -1))
        return _rms_norm(x[:, -1], self.norm, self.norm_eps)

    def decode(
        self,
        ids: torch.Tensor,
        position: torch.Tensor,
        kv: KVCache,
        window: int,
        masked: bool,
        prefix: KVCache | None = None,
    ) -> torch.Tensor:
        """One token per row: ``ids`` [rows] at ``position`` (0-dim long tensor, the same for every
        row). Writes its K/V there and attends to positions ``< window`` of the cache (``masked``:
        positions after ``position`` are masked out; else ``window`` must be ``position + 1``).
        ``prefix`` (CPU low precision only): fp32 K/V [kv_heads, P, head_dim] per layer of the first P
        positions, the same in every row (the shared prompt). Returns hidden [rows, H] (final norm
        applied). No host synchronisation: graph-capturable."""
        rows = ids.shape[0]
        x = F.embedding(ids[:, None], self.embed)
        cos, sin = self._rope(position.view(1, 1))
        index = position.view(1)
        mask = (self._arange[:window] <= position).view(1, 1, 1, window) if masked else None
        for number, (layer, (keys, values)) in enumerate(zip(self.layers, kv, strict=True)):
            q, k, v = self._qkv(layer, x, cos, sin)
            keys = keys[:rows]
            values = values[:rows]
            keys.index_copy_(2, index, k)
            values.index_copy_(2, index, v)
            if self.cpu_low_precision:
                shared = prefix[number] if prefix is not None else None
                attn = self._attend_fp32(q, keys[:, :, :window], values[:, :, :window], mask, shared)
            elif mask is None:  # exact window: transformers' own SDPA call
                attn = F.scaled_dot_product_attention(
                    q,
                    keys[:, :, :window],
                    values[:, :, :window],
                    scale=self.scale,
                    enable_gqa=self.groups > 1,
                ).transpose(1, 2)
            else:
                # Grouped-query attention without repeating K/V and with a mask (any SDPA kernel):
                # the query heads of one KV head become its query rows (transformers' pack_gqa).
                q = q.reshape(rows, self.num_kv_heads, self.groups, self.head_dim)
                attn = F.scaled_dot_product_attention(
                    q, keys[:, :, :window], values[:, :, :window], attn_mask=mask, scale=self.scale
                )
            x = self._finish_layer(layer, x, attn.reshape(rows, 1, -1))
        return _rms_norm(x[:, 0], self.norm, self.norm_eps)
