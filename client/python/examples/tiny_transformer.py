#!/usr/bin/env python3
"""A tiny transformer whose attention runs in flashkv, checked against local attention.

The model takes its shape from the server (GetCacheInfo: layers, query/KV heads, head dim, dtype)
and has random weights: token embeddings (tied with the output), and per layer an RMSNorm, the
Q/K/V/O projections and a small MLP. It does what a model runner does:

  1. prefill: three prompts of different lengths go through every layer in one Step per layer
     (entries of different lengths in one batch), with their token ids for prefix caching;
  2. a fourth sequence shares the first's prompt prefix: CreateSequence reports the cached
     tokens, and only the rest of its prompt is sent;
  3. a fork: the first sequence is forked, and the child decodes its own tokens;
  4. decode: greedy tokens for all sequences, the batch split into two micro-batches pipelined
     over one StepStream (layer l of micro-batch B is on the wire while A's is computed), each
     micro-batch's forward pass a decode pass: its layer-0 step names the sequences, and the
     server resolves them and reserves their pages once for every layer; the later layers carry
     only the pass id and the batch's q/k/v.

Every attention output flashkv returns is compared with attention computed here in float64 on
exactly the q, k and v that were sent (the cached prefix and the fork's parent context
included): causal with bottom-right alignment, grouped-query heads. The model then continues on
flashkv's output, as a real runner would. Exit status 0 when every output is within the dtype's
tolerance, 1 otherwise (2: server unusable).

Projections run in torch when it is importable (and --numpy is not given), else in numpy; the
tensors sent are torch tensors or numpy arrays accordingly.

  python3 client/python/examples/tiny_transformer.py --target 127.0.0.1:50051
"""

import argparse
import os
import sys
import uuid

import numpy as np

try:
    import flashkv
except ImportError:  # not installed: the source tree's copy (after generate_protos.py)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import flashkv
from flashkv import reference  # noqa: E402

VOCAB = 512
D_MODEL = 64


class Model:
    """Random weights; numpy float32 or torch float32 math; tensors sent in the server's dtype."""

    def __init__(self, info, seed, use_torch):
        self.layers, self.hq, self.hkv, self.d = (info.num_layers, info.num_q_heads,
                                                  info.num_kv_heads, info.head_dim)
        self.dtype = flashkv.tensor.dtype_name(info.dtype)
        rng = np.random.default_rng(seed)

        def w(*shape):
            return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

        self.embed = rng.standard_normal((VOCAB, D_MODEL)).astype(np.float32)
        self.wq = [w(D_MODEL, self.hq * self.d) for _ in range(self.layers)]
        self.wk = [w(D_MODEL, self.hkv * self.d) for _ in range(self.layers)]
        self.wv = [w(D_MODEL, self.hkv * self.d) for _ in range(self.layers)]
        self.wo = [w(self.hq * self.d, D_MODEL) for _ in range(self.layers)]
        self.w1 = [w(D_MODEL, 4 * D_MODEL) for _ in range(self.layers)]
        self.w2 = [w(4 * D_MODEL, D_MODEL) for _ in range(self.layers)]
        self.torch = None
        if use_torch:
            import torch
            self.torch = torch
            for name in ("embed", "wq", "wk", "wv", "wo", "w1", "w2"):
                value = getattr(self, name)
                setattr(self, name, torch.from_numpy(value) if isinstance(value, np.ndarray)
                        else [torch.from_numpy(x) for x in value])

    def _wire(self, x):
        """x in the server's dtype: a torch tensor, or a numpy array (bf16 as uint16 bits)."""
        if self.torch is not None:
            return x.to({"fp16": self.torch.float16, "bf16": self.torch.bfloat16,
                         "fp32": self.torch.float32}[self.dtype])
        if self.dtype == "bf16":
            return flashkv.float_to_bf16_bits(x)
        return x.astype(np.float16 if self.dtype == "fp16" else np.float32)

    def _f32(self, x):
        if self.torch is not None:
            return x.float()
        return flashkv.to_float32(x)

    def concat(self, xs):
        """Rows of several sequences as one batch tensor."""
        return self.torch.cat(xs) if self.torch is not None else np.concatenate(xs)

    def embed_tokens(self, tokens):
        return self.embed[[int(t) for t in tokens]]

    def qkv(self, layer, x):
        """RMSNorm then projections: q [n,Hq,D], k, v [n,Hkv,D] in the wire dtype."""
        h = x / ((x * x).mean(-1, keepdims=True) + 1e-6) ** 0.5
        n = h.shape[0]
        return (self._wire((h @ self.wq[layer]).reshape(n, self.hq, self.d)),
                self._wire((h @ self.wk[layer]).reshape(n, self.hkv, self.d)),
                self._wire((h @ self.wv[layer]).reshape(n, self.hkv, self.d)))

    def finish_layer(self, layer, x, attn):
        """Residual attention output and MLP, on flashkv's attention output."""
        n = x.shape[0]
        x = x + self._f32(attn).reshape(n, self.hq * self.d) @ self.wo[layer]
        hidden = x @ self.w1[layer]
        return x + (hidden * (hidden > 0)) @ self.w2[layer]

    def next_token(self, x_last, rank=0):
        logits = self.embed @ x_last
        order = (logits.argsort(descending=True) if self.torch is not None
                 else np.argsort(-logits))
        return int(order[rank])


class Checker:
    """Keeps, per sequence and layer, the K/V that the server's cache holds (as sent, widened
    exactly to float64) and checks each attention output against float64 attention over them."""

    def __init__(self, dtype):
        self.dtype = dtype
        self.kv = {}  # (sequence, layer) -> (k [T,Hkv,D], v) float64
        self.outputs = self.elements = self.bad = 0
        self.max_error = 0.0

    def append(self, seq, layer, k, v):
        k, v = reference.to_float64(k), reference.to_float64(v)
        old = self.kv.get((seq, layer))
        self.kv[(seq, layer)] = (k, v) if old is None else (np.concatenate([old[0], k]),
                                                            np.concatenate([old[1], v]))

    def copy(self, parent, child, layers, tokens=None):
        """child's cache := parent's (or its first `tokens` rows, for a cached prefix)."""
        for layer in range(layers):
            k, v = self.kv[(parent, layer)]
            self.kv[(child, layer)] = (k[:tokens], v[:tokens])

    def check(self, seq, layer, q, out, label):
        k, v = self.kv[(seq, layer)]
        want, _ = reference.attention(reference.to_float64(q), k, v, causal=True)
        err, bad = reference.max_violation(out, want, self.dtype)
        self.outputs += 1
        self.elements += want.size
        self.bad += bad
        self.max_error = max(self.max_error, err)
        if bad:
            print(f"MISMATCH {label}: sequence {seq} layer {layer}: {bad} elements, max error "
                  f"{err:.3g}", file=sys.stderr)


def run_layers(client, model, checker, seqs, tokens_of, label, session=None, micro_batches=1):
    """One forward pass of `seqs` over new tokens tokens_of[s]; returns each one's last hidden
    state. Without a session, one Step of entries per layer; with one, the batch is split into
    micro-batches, each a decode pass, pipelined layer by layer."""
    xs = {s: model.embed_tokens(tokens_of[s]) for s in seqs}
    groups = [seqs[i::micro_batches] for i in range(micro_batches)]
    groups = [g for g in groups if g]
    passes = None
    if session is not None:
        passes = [session.begin_pass(g, num_tokens=[len(tokens_of[s]) for s in g],
                                     token_ids=[t for s in g for t in tokens_of[s]])
                  for g in groups]
    for layer in range(model.layers):
        sent = []
        for i, group in enumerate(groups):
            qkv = {s: model.qkv(layer, xs[s]) for s in group}
            for s in group:
                checker.append(s, layer, qkv[s][1], qkv[s][2])
            if passes is None:
                entries = [flashkv.StepInput(s, *qkv[s], token_ids=tokens_of[s]) for s in group]
                outs = client.step(layer, entries)
            else:  # the group's rows stacked: q [T,Hq,D], k, v [T,Hkv,D]
                passes[i].send(layer, *(model.concat([qkv[s][j] for s in group])
                                        for j in range(3)))
                outs = None
            sent.append((group, qkv, outs))
        for group, qkv, outs in sent:
            if outs is None:
                batch_out = session.receive()
                rows = np.cumsum([0] + [len(tokens_of[s]) for s in group])
                outs = [batch_out[rows[j]:rows[j + 1]] for j in range(len(group))]
            for s, out in zip(group, outs):
                checker.check(s, layer, qkv[s][0], out, label)
                xs[s] = model.finish_layer(layer, xs[s], out)
    return {s: xs[s][-1] for s in seqs}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--decode-steps", type=int, default=6)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--numpy", action="store_true", help="numpy math even if torch is present")
    args = p.parse_args(argv)
    try:
        import torch  # noqa: F401
        use_torch = not args.numpy
    except ImportError:
        use_torch = False

    with flashkv.Client(args.target) as client:
        try:
            client.wait_for_serving(30)
            info = client.cache_info()
        except flashkv.FlashkvError as e:
            print(f"tiny_transformer: server unusable: {e}", file=sys.stderr)
            return 2
        model = Model(info, args.seed, use_torch)
        checker = Checker(model.dtype)
        rng = np.random.default_rng(args.seed)
        run = uuid.uuid4().hex[:8]
        page = info.page_size
        # Prompts of different lengths; the shared one is two pages and a bit long.
        prompts = {f"{run}-s{i}": list(rng.integers(0, VOCAB, n)) for i, n in
                   enumerate((2 * page + 3, 5, 1))}
        first = f"{run}-s0"
        created = []
        try:
            for s, prompt in prompts.items():
                client.create_sequence(s, prompt)
                created.append(s)
            hidden = run_layers(client, model, checker, list(prompts), prompts, "prefill")

            # A prompt sharing the first one's leading pages: only the rest is sent.
            shared = f"{run}-shared"
            shared_prompt = prompts[first][:2 * page] + list(rng.integers(0, VOCAB, 3))
            cached = client.create_sequence(shared, shared_prompt)
            created.append(shared)
            checker.copy(first, shared, model.layers, tokens=cached)
            rest = {shared: shared_prompt[cached:]}
            hidden.update(run_layers(client, model, checker, [shared], rest, "prefix"))

            # A fork of the first sequence, which then decodes its second-best token.
            child = f"{run}-fork"
            client.fork_sequence(first, child)
            created.append(child)
            checker.copy(first, child, model.layers)
            hidden[child] = hidden[first]

            live = list(hidden)
            rank = {s: (1 if s == child else 0) for s in live}
            with client.open_step_session(routing_key=f"{run}-runner") as session:
                for step in range(args.decode_steps):
                    tokens = {s: [model.next_token(hidden[s], rank[s])] for s in live}
                    hidden = run_layers(client, model, checker, live, tokens, f"decode {step}",
                                        session=session, micro_batches=2)
        except flashkv.FlashkvError as e:
            print(f"tiny_transformer: {e}", file=sys.stderr)
            return 1
        finally:
            for s in created:
                try:
                    client.free_sequence(s)
                except flashkv.FlashkvError:
                    pass
    print(f"tiny_transformer: {info.backend} server, {model.layers} layers, Hq={model.hq} "
          f"Hkv={model.hkv} D={model.d} {model.dtype}, {'torch' if use_torch else 'numpy'} "
          f"math; prefix cache gave {cached} of {len(shared_prompt)} prompt tokens; "
          f"{args.decode_steps * min(2, len(live))} decode passes; "
          f"{checker.outputs} attention outputs ({checker.elements} elements) checked, max "
          f"error {checker.max_error:.3g}, {checker.bad} beyond tolerance")
    return 0 if checker.bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
