#!/usr/bin/env python3
"""Writes a copy of a llama GGUF keeping only its first N blocks (plus the embedding, the
output norm and, if present, the output head), with `llama.block_count` set to N.

The GPU machine receives at most 64 MiB of files per run and SmolLM2's GGUF is 98 MB: a
6-block copy (~43 MB) lets scripts/gpu-check.sh compare the GPU and CPU paths on the real
weights. Standard library only.

usage: gguf_truncate.py IN.gguf OUT.gguf BLOCKS
"""
import struct
import sys

SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, fmt):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            sys.exit("truncated GGUF header")
        (v,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return v

    def string(self):
        n = self.take("Q")
        s = self.data[self.pos : self.pos + n]
        self.pos += n
        return s

    def value(self, t):
        """Skips one value of type t; returns its raw bytes and, for scalars, the value."""
        start = self.pos
        val = None
        if t in SCALAR:
            val = self.take(SCALAR[t])
        elif t == 8:
            val = self.string()
        elif t == 9:
            inner, n = self.take("I"), self.take("Q")
            for _ in range(n):
                self.value(inner)
        else:
            sys.exit(f"unknown GGUF value type {t}")
        return self.data[start : self.pos], val


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, dst, blocks = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if blocks < 1:
        sys.exit("BLOCKS must be at least 1")
    data = open(src, "rb").read()
    r = Reader(data)
    if data[:4] != b"GGUF":
        sys.exit(f"{src} is not a GGUF file")
    r.pos = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    kvs, alignment, arch_blocks = [], 32, None
    for _ in range(n_kv):
        key = r.string()
        t = r.take("I")
        raw, val = r.value(t)
        if key == b"general.alignment":
            alignment = val
        if key.endswith(b".block_count"):
            arch_blocks = val
            raw = struct.pack("<I", blocks) if t == 4 else struct.pack("<" + SCALAR[t], blocks)
        kvs.append((key, t, raw))
    if arch_blocks is None or blocks > arch_blocks:
        sys.exit(f"the model has {arch_blocks} blocks; cannot keep {blocks}")
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        n_dims = r.take("I")
        dims = [r.take("Q") for _ in range(n_dims)]
        t, offset = r.take("I"), r.take("Q")
        tensors.append((name, dims, t, offset))
    data_start = (r.pos + alignment - 1) // alignment * alignment
    ends = sorted(o for *_, o in tensors) + [len(data) - data_start]

    def size_of(offset):
        return next(e for e in ends if e > offset) - offset

    def keep(name):
        if not name.startswith(b"blk."):
            return True
        return int(name.split(b".")[1]) < blocks

    kept = [(n, d, t, o, size_of(o)) for n, d, t, o in tensors if keep(n)]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(kept), len(kvs)))
    for key, t, raw in kvs:
        out += struct.pack("<Q", len(key)) + key + struct.pack("<I", t) + raw
    offset = 0
    layout = []
    for name, dims, t, old, size in kept:
        out += struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", t, offset)
        layout.append((old, size, offset))
        offset = (offset + size + alignment - 1) // alignment * alignment
    out += b"\0" * ((-len(out)) % alignment)
    base = len(out)
    out += b"\0" * offset
    for old, size, new in layout:
        out[base + new : base + new + size] = data[data_start + old : data_start + old + size]
    open(dst, "wb").write(out)
    print(f"{dst}: {len(kept)} of {n_tensors} tensors, {blocks} of {arch_blocks} blocks, {len(out) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
