"""Dependency-free safetensors reading/writing for the project's scripts (stdlib only, so the
CI machine needs no numpy). Tensors are (dtype, shape, flat list) triples."""
import json
import struct

_FORMATS = {"F32": ("f", 4), "F64": ("d", 8), "I64": ("q", 8), "I32": ("i", 4)}


def read(path):
    """Returns {name: (dtype, shape, flat values)} for the F32/F64/I64/I32 tensors of `path`."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] not in _FORMATS:
            continue
        code, size = _FORMATS[info["dtype"]]
        begin, end = info["data_offsets"]
        count = (end - begin) // size
        out[name] = (info["dtype"], info["shape"], struct.unpack(f"<{count}{code}", data[begin:end]))
    return out


def write(path, tensors):
    """tensors: {name: (dtype, shape, flat values)}."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, values) in tensors.items():
        code, _ = _FORMATS[dtype]
        blob = struct.pack(f"<{len(values)}{code}", *values)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def read_moments(step_dir):
    """A training checkpoint folder's AdamW moments {"m.<name>" / "v.<name>": (dtype, shape, flat
    values)}: its trainer_state.safetensors (one process), or the pieces "m.<name>@<first>" of the
    ranks' optimizer/ shard files (multi-rank runs) put back together; every element must come from
    exactly one piece. Shapes from the folder's weights (model.safetensors, or its shards)."""
    import os
    if os.path.exists(f"{step_dir}/trainer_state.safetensors"):
        return read(f"{step_dir}/trainer_state.safetensors")
    if os.path.exists(f"{step_dir}/model.safetensors"):
        weights = read(f"{step_dir}/model.safetensors")
    else:  # weights split by --max_shard_bytes
        weights = {}
        for file in sorted(set(json.load(open(f"{step_dir}/model.safetensors.index.json"))["weight_map"].values())):
            weights.update(read(f"{step_dir}/{file}"))
    index = json.load(open(f"{step_dir}/optimizer/index.json"))
    out, filled = {}, {}
    for name, (_, shape, values) in weights.items():
        for which in ("m", "v"):
            out[f"{which}.{name}"] = ("F32", shape, [0.0] * len(values))
            filled[f"{which}.{name}"] = [0] * len(values)
    for file in index["files"]:
        for key, (_, shape, values) in read(f"{step_dir}/optimizer/{file}").items():
            tensor, first = key.rsplit("@", 1)
            first = int(first)
            flat, seen = out[tensor][2], filled[tensor]
            for i, value in enumerate(values):
                flat[first + i] = value
                seen[first + i] += 1
    for tensor, seen in filled.items():
        bad = [i for i, n in enumerate(seen) if n != 1]
        assert not bad, f"{step_dir}: {tensor}[{bad[0]}] is in {seen[bad[0]]} optimizer pieces (not exactly one)"
    return out
