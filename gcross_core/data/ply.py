"""A reader for PLY files: binary (either endianness) or ASCII, any elements, scalar and list properties.

A file that is not PLY, has a malformed header or ends before its elements do raises
:class:`~gcross_core.errors.InputError` naming the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from gcross_core.errors import InputError

PathLike = Union[str, Path]

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


@dataclass
class _PlyElement:
    name: str
    count: int
    props: List[Tuple[str, str, Optional[str]]]  # (name, item type, list count type or None)


def _parse_ply_header(f, path) -> Tuple[str, List[_PlyElement]]:
    if f.readline().strip() != b"ply":
        raise InputError(f"{path} is not a PLY file (first line is not 'ply')")
    fmt, elements = None, []
    while True:
        line = f.readline()
        if not line:
            raise InputError(f"{path}: PLY header has no end_header line")
        tok = line.decode("ascii", "replace").split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "end_header":
            break
        try:
            if tok[0] == "format":
                fmt = tok[1]
            elif tok[0] == "element":
                elements.append(_PlyElement(tok[1], int(tok[2]), []))
            elif tok[0] == "property":
                if not elements:
                    raise InputError(f"{path}: PLY property before any element")
                if tok[1] == "list":
                    elements[-1].props.append((tok[4], _ply_type(tok[3], path), _ply_type(tok[2], path)))
                else:
                    elements[-1].props.append((tok[2], _ply_type(tok[1], path), None))
        except (IndexError, ValueError) as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"{path}: malformed PLY header line {' '.join(tok)!r}, expected "
                             f"'format <kind> <version>', 'element <name> <count>' or 'property ...'") from None
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise InputError(f"{path}: unsupported PLY format {fmt!r}, expected ascii, binary_little_endian or "
                         f"binary_big_endian")
    return fmt, elements


def _ply_type(name: str, path) -> str:
    if name not in _PLY_TYPES:
        raise InputError(f"{path}: unknown PLY type {name!r}, expected one of {sorted(_PLY_TYPES)}")
    return _PLY_TYPES[name]


def _read_binary_element(buf: memoryview, pos: int, el: _PlyElement, endian: str, path):
    has_list = any(p[2] is not None for p in el.props)
    if not has_list:
        dtype = np.dtype([(n, endian + t) for n, t, _ in el.props])
        end = pos + dtype.itemsize * el.count
        if end > len(buf):
            raise InputError(f"{path} is truncated: element {el.name} needs {end - pos} bytes, {len(buf) - pos} left")
        arr = np.frombuffer(buf[pos:end], dtype=dtype, count=el.count)
        return {n: arr[n].astype(arr[n].dtype.newbyteorder("=")) for n, _, _ in el.props}, end
    # Fast path: every list has the length of the first one (triangle meshes); verified below.
    fixed = []
    probe = pos
    for n, t, ct in el.props:
        if ct is None:
            fixed.append((n, endian + t))
            probe += np.dtype(t).itemsize
        else:
            if probe + np.dtype(ct).itemsize > len(buf):
                raise InputError(f"{path} is truncated: element {el.name} ends before its {el.count} items")
            k = int(np.frombuffer(buf[probe:probe + np.dtype(ct).itemsize], dtype=endian + ct)[0])
            fixed += [(n + "__count", endian + ct), (n, endian + t, (k,))]
            probe += np.dtype(ct).itemsize + k * np.dtype(t).itemsize
    dtype = np.dtype(fixed)
    end = pos + dtype.itemsize * el.count
    if el.count == 0:
        return {n: np.zeros((0, 0)) for n, _, _ in el.props}, pos
    if end <= len(buf):
        arr = np.frombuffer(buf[pos:end], dtype=dtype, count=el.count)
        if all(np.all(arr[n + "__count"] == arr.dtype[n].shape[0]) for n, _, ct in el.props if ct is not None):
            return {n: np.ascontiguousarray(arr[n]).astype(arr.dtype[n].base.newbyteorder("="))
                    for n, _, _ in el.props}, end
    # Slow path: mixed list lengths (e.g. quads and triangles).
    out: Dict[str, list] = {n: [] for n, _, _ in el.props}
    for _ in range(el.count):
        for n, t, ct in el.props:
            if ct is None:
                size = np.dtype(t).itemsize
                if pos + size > len(buf):
                    raise InputError(f"{path} is truncated: element {el.name} ends before its {el.count} items")
                out[n].append(np.frombuffer(buf[pos:pos + size], dtype=endian + t)[0])
                pos += size
            else:
                cs = np.dtype(ct).itemsize
                if pos + cs > len(buf):
                    raise InputError(f"{path} is truncated: element {el.name} ends before its {el.count} items")
                k = int(np.frombuffer(buf[pos:pos + cs], dtype=endian + ct)[0])
                pos += cs
                size = k * np.dtype(t).itemsize
                if pos + size > len(buf):
                    raise InputError(f"{path} is truncated: element {el.name} ends before its {el.count} items")
                out[n].append(np.frombuffer(buf[pos:pos + size], dtype=endian + t).astype(t))
                pos += size
    return {n: (np.array(v) if ct is None else v) for (n, _, ct), v in zip(el.props, out.values())}, pos


def _read_ascii(tokens: List[bytes], elements: List[_PlyElement], path) -> Dict[str, Dict[str, np.ndarray]]:
    out = {}
    pos = 0
    for el in elements:
        cols: Dict[str, list] = {n: [] for n, _, _ in el.props}
        for _ in range(el.count):
            for n, t, ct in el.props:
                if pos >= len(tokens):
                    raise InputError(f"{path} is truncated: element {el.name} ends before its {el.count} items")
                if ct is None:
                    cols[n].append(float(tokens[pos]))
                    pos += 1
                else:
                    k = int(tokens[pos])
                    if pos + 1 + k > len(tokens):
                        raise InputError(f"{path} is truncated: element {el.name} ends before its {el.count} items")
                    cols[n].append([float(x) for x in tokens[pos + 1:pos + 1 + k]])
                    pos += 1 + k
        res = {}
        for n, t, ct in el.props:
            v = cols[n]
            if ct is not None and len({len(x) for x in v}) > 1:
                res[n] = [np.array(x, dtype=t) for x in v]
            else:
                res[n] = np.array(v, dtype=t)
        out[el.name] = res
    return out


def read_ply(path: PathLike) -> Dict[str, Dict[str, np.ndarray]]:
    """{element: {property: array}} of a binary (either endianness) or ASCII PLY file.

    Scalar properties give [count] arrays; list properties give [count, k] arrays when every list has k
    items (triangle faces) and a list of arrays otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file {path} is missing")
    with open(path, "rb") as f:
        fmt, elements = _parse_ply_header(f, path)
        body = f.read()
    if fmt == "ascii":
        try:
            return _read_ascii(body.split(), elements, path)
        except ValueError as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"{path}: ASCII PLY body holds a value that is not a number ({e})") from None
    endian = "<" if fmt == "binary_little_endian" else ">"
    buf = memoryview(body)
    pos = 0
    out = {}
    for el in elements:
        out[el.name], pos = _read_binary_element(buf, pos, el, endian, path)
    return out
