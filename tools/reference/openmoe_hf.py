"""OpenMoE as a Hugging Face `PreTrainedModel`, written from docs/openmoe_spec.md section 2
(not from the project's C++), so that it is an independent reference for //tools:logits.

Loads the same folders as the C++ code (config.json + model.safetensors / pytorch_model*.bin):

    from openmoe_hf import OpenMoeConfig, register
    register()
    model = AutoModelForCausalLM.from_pretrained(folder, config=OpenMoeConfig.from_pretrained(folder))
    model.eval()        # eval routing: capacity factor router_capacity_factor_eval (2.0)
    model.train()       # train routing: router_capacity_factor_train (1.25); no dropout exists

Semantics (spec 2.x): no embedding scaling; pre-norm RMSNorm (fp32 variance); attention with
RoPE rotate-half over the full head_dim (base 1e4, positions = column indices), NO 1/sqrt(d)
scaling, causal + padding mask with key 0 always attendable, fp32 softmax; MLP
down(g[:, :I] * silu(g[:, I:]) * up); MoE every moe_layer_interval-th layer: fp32 router softmax,
top-2 on probabilities (ties to the lowest index), capacity floor(2*cf*N/E) rounded up to even,
at least router_min_capacity, all top-1 assignments queued before top-2 in token order, dropped
assignments contribute nothing, combine with raw probabilities; then the extra dense MLP with
its own norm; final norm; untied lm_head.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

try:
    from transformers import PretrainedConfig
except ImportError:  # transformers >= 5 renamed it
    from transformers import PreTrainedConfig as PretrainedConfig
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

_OLD_KEYS = {"topk": "router_topk", "capacity_factor_train": "router_capacity_factor_train",
             "capacity_factor_eval": "router_capacity_factor_eval", "min_capacity": "router_min_capacity"}


class OpenMoeConfig(PretrainedConfig):
    model_type = "openmoe"

    def __init__(self, vocab_size=256384, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=12, num_key_value_heads=None, head_dim=None, max_position_embeddings=2048,
                 rms_norm_eps=1e-6, num_experts=16, moe_layer_interval=4, router_topk=2,
                 router_capacity_factor_train=1.25, router_capacity_factor_eval=2.0, router_min_capacity=4,
                 pad_token_id=0, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, **kwargs):
        for old, new in _OLD_KEYS.items():
            if old in kwargs:
                value = kwargs.pop(old)
                if new == "router_topk":
                    router_topk = value
                elif new == "router_capacity_factor_train":
                    router_capacity_factor_train = value
                elif new == "router_capacity_factor_eval":
                    router_capacity_factor_eval = value
                else:
                    router_min_capacity = value
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.num_experts = num_experts
        self.moe_layer_interval = moe_layer_interval
        self.router_topk = router_topk
        self.router_capacity_factor_train = router_capacity_factor_train
        self.router_capacity_factor_eval = router_capacity_factor_eval
        self.router_min_capacity = router_min_capacity
        kwargs.pop("model_type", None)
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


class RMSNorm(nn.Module):
    def __init__(self, hidden, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True) if dtype != torch.float64 else x.pow(2).mean(-1, keepdim=True)
        x = (x * torch.rsqrt(variance + self.eps)).to(dtype)
        return self.weight * x


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.nh, self.nkv, self.hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, c.hidden_size, bias=False)

    def forward(self, x, key_mask, past=None):
        """x [B, S, H]; key_mask [B, L0 + S] over past and new columns; past = (k, v) of the
        earlier columns, keys already rotated at their absolute positions (equivalent to
        re-rotating un-rotated keys every step). Returns (out, (k_all, v_all))."""
        B, S, _ = x.shape
        L0 = 0 if past is None else past[0].shape[2]
        q = self.q_proj(x).view(B, S, self.nh, self.hd).transpose(1, 2)  # [B, nh, S, hd]
        k = self.k_proj(x).view(B, S, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, S, self.nkv, self.hd).transpose(1, 2)
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.hd, 2, dtype=torch.float64, device=x.device) / self.hd))
        angle = torch.arange(L0, L0 + S, dtype=torch.float64, device=x.device)[:, None] * inv_freq[None]
        angle = torch.cat((angle, angle), dim=-1)  # [S, hd], absolute column positions
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        present = (k, v)
        if self.nkv != self.nh:
            k = k.repeat_interleave(self.nh // self.nkv, dim=1)
            v = v.repeat_interleave(self.nh // self.nkv, dim=1)
        scores = q @ k.transpose(-1, -2)  # no 1/sqrt(hd); [B, nh, S, L0 + S]
        rows = torch.arange(L0, L0 + S, device=x.device)[:, None]
        causal = torch.arange(L0 + S, device=x.device)[None, :] <= rows
        allowed = causal[None, None] & key_mask[:, None, None, :].bool()
        allowed[..., 0] = True  # key 0 is always attendable
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        probs = torch.softmax(scores.to(torch.float32) if scores.dtype != torch.float64 else scores, -1).to(v.dtype)
        out = (probs @ v).transpose(1, 2).reshape(B, S, self.nh * self.hd)
        return self.o_proj(out), present


class Mlp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.I = c.intermediate_size
        self.gate_proj = nn.Linear(c.hidden_size, 2 * self.I, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, self.I, bias=False)
        self.down_proj = nn.Linear(self.I, c.hidden_size, bias=False)

    def forward(self, x):
        g = self.gate_proj(x)
        return self.down_proj(g[..., :self.I] * F.silu(g[..., self.I:]) * self.up_proj(x))


class Experts(nn.Module):
    def __init__(self, c):
        super().__init__()
        E, H, I = c.num_experts, c.hidden_size, c.intermediate_size
        self.I = I
        self.wi_gate = nn.Parameter(torch.empty(E, H, 2 * I))
        self.wi_up = nn.Parameter(torch.empty(E, H, I))
        self.wo = nn.Parameter(torch.empty(E, I, H))

    def forward(self, x):  # x [E, C, H]
        g = torch.bmm(x, self.wi_gate)
        return torch.bmm(g[..., :self.I] * F.silu(g[..., self.I:]) * torch.bmm(x, self.wi_up), self.wo)


class SparseMoe(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.gate_weight = nn.Parameter(torch.empty(c.num_experts, c.hidden_size))
        self.experts = Experts(c)

    def forward(self, x):
        B, S, H = x.shape
        E, c = self.c.num_experts, self.c
        t = x.reshape(-1, H)  # [N, H], batch-major
        N = t.shape[0]
        logits = t @ self.gate_weight.t()
        logits = logits.to(torch.float32) if logits.dtype != torch.float64 else logits
        probs = torch.softmax(logits, -1)  # [N, E]
        top1 = probs.argmax(-1)  # first maximal index on ties
        top2 = probs.scatter(1, top1[:, None], float("-inf")).argmax(-1)
        cf = c.router_capacity_factor_train if self.training else c.router_capacity_factor_eval
        capacity = math.floor(2 * cf * N / E)
        capacity += capacity % 2
        capacity = max(capacity, c.router_min_capacity)
        m1, m2 = F.one_hot(top1, E), F.one_hot(top2, E)  # [N, E]
        rank1 = ((m1.cumsum(0) - 1) * m1).sum(-1)
        rank2 = ((m2.cumsum(0) - 1 + m1.sum(0, keepdim=True)) * m2).sum(-1)  # behind all top-1
        keep1, keep2 = rank1 < capacity, rank2 < capacity
        self.last_stats = {"capacity": capacity, "kept": int(keep1.sum() + keep2.sum()), "assigned": 2 * N}
        dispatched = t.new_zeros(E, capacity, H)
        idx = torch.arange(N, device=x.device)
        dispatched[top1[keep1], rank1[keep1]] = t[idx[keep1]]
        dispatched[top2[keep2], rank2[keep2]] = t[idx[keep2]]
        out = self.experts(dispatched)  # [E, C, H]
        y = t.new_zeros(N, H)
        w1 = probs.gather(1, top1[:, None]).squeeze(1).to(t.dtype)
        w2 = probs.gather(1, top2[:, None]).squeeze(1).to(t.dtype)
        y[keep1] += w1[keep1, None] * out[top1[keep1], rank1[keep1]]
        y[keep2] += w2[keep2, None] * out[top2[keep2], rank2[keep2]]
        return y.view(B, S, H)


class DecoderLayer(nn.Module):
    def __init__(self, c, moe):
        super().__init__()
        self.moe = moe
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = SparseMoe(c) if moe else Mlp(c)
        if moe:
            self.pre_extra_mlp_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
            self.extra_mlp = Mlp(c)

    def forward(self, h, key_mask, past=None):
        attn, present = self.self_attn(self.input_layernorm(h), key_mask, past)
        h = h + attn
        h = h + self.mlp(self.post_attention_layernorm(h))
        if self.moe:
            h = h + self.extra_mlp(self.pre_extra_mlp_layernorm(h))
        return h, present


class OpenMoeModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=c.pad_token_id)
        self.layers = nn.ModuleList(
            [DecoderLayer(c, (i + 1) % c.moe_layer_interval == 0) for i in range(c.num_hidden_layers)])
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class OpenMoeForCausalLM(PreTrainedModel):
    config_class = OpenMoeConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]

    def __init__(self, config):
        super().__init__(config)
        self.model = OpenMoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module):  # spec 2.6
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, Experts):
            H, I = self.config.hidden_size, self.config.intermediate_size
            module.wi_gate.data.normal_(0.0, math.sqrt(0.1 / H))
            module.wi_up.data.normal_(0.0, math.sqrt(0.1 / H))
            module.wo.data.normal_(0.0, math.sqrt(0.1 / I))
        elif isinstance(module, SparseMoe):
            module.gate_weight.data.normal_(0.0, math.sqrt(0.1 / self.config.hidden_size))

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False,
                last_only=False, **kwargs):
        """attention_mask covers past and new columns [B, L0 + S]. With use_cache, returns the
        per-layer (k, v) in past_key_values; the new tokens of one call form one routing group."""
        L0 = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape[0], L0 + input_ids.shape[1], dtype=torch.long,
                                        device=input_ids.device)
        if L0 + input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError("sequence longer than max_position_embeddings")
        h = self.model.embed_tokens(input_ids)
        presents = []
        for i, layer in enumerate(self.model.layers):
            h, present = layer(h, attention_mask, None if past_key_values is None else past_key_values[i])
            presents.append(present)
        if last_only:
            h = h[:, -1:]
        logits = self.lm_head(self.model.norm(h)).float()
        return CausalLMOutputWithPast(logits=logits, past_key_values=tuple(presents) if use_cache else None)

    @torch.no_grad()
    def greedy(self, input_ids, attention_mask, steps):
        """KV-cache greedy decoding (prompt = one routing group, each step another); [B, steps]."""
        out = self(input_ids, attention_mask=attention_mask, use_cache=True, last_only=True)
        mask, tokens = attention_mask, []
        for _ in range(steps):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(nxt)
            mask = torch.cat((mask, torch.ones_like(nxt)), dim=1)
            out = self(nxt, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True, last_only=True)
        return torch.cat(tokens, dim=1)

    def routing_stats(self):
        return [layer.mlp.last_stats for layer in self.model.layers if layer.moe]


def register():
    """Makes AutoConfig / AutoModelForCausalLM know the "openmoe" model type."""
    try:
        AutoConfig.register("openmoe", OpenMoeConfig)
        AutoModelForCausalLM.register(OpenMoeConfig, OpenMoeForCausalLM)
    except ValueError:
        pass  # already registered
