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
