"""CUDA virtual memory management (the driver API, through ctypes) for the virtual-contiguous layout.

`Mapped` reserves one virtual range of [B, reserve, row] bytes and maps physical pages (cuMemCreate,
granule-sized) under it as a `kvlab.layouts.virtual.Plan` says, a shared page under every range
that holds it; the attention kernel then reads it as plain contiguous K or V ([B, stride, Hkv, D])
with no block table. `costs` times the VMM calls per page, `replay` performs a decode trace's page
operations (kvlab.trace) and times them per step. Needs libcuda and a current CUDA context (torch
makes one; `Driver` retains the device's primary context, the one torch uses).
"""

from __future__ import annotations

import ctypes
import math
import time

import numpy as np

CU_MEM_ALLOCATION_TYPE_PINNED = 1
CU_MEM_LOCATION_TYPE_DEVICE = 1
CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 3
CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0


class _Location(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int)]


class _AllocFlags(ctypes.Structure):
    _fields_ = [("compressionType", ctypes.c_ubyte), ("gpuDirectRDMACapable", ctypes.c_ubyte),
                ("usage", ctypes.c_ushort), ("reserved", ctypes.c_ubyte * 4)]


class _Prop(ctypes.Structure):  # CUmemAllocationProp
    _fields_ = [("type", ctypes.c_int), ("requestedHandleTypes", ctypes.c_int), ("location", _Location),
                ("win32HandleMetaData", ctypes.c_void_p), ("allocFlags", _AllocFlags)]


class _Access(ctypes.Structure):  # CUmemAccessDesc
    _fields_ = [("location", _Location), ("flags", ctypes.c_int)]


_U64, _SZ = ctypes.c_uint64, ctypes.c_size_t


class Driver:
    def __init__(self, device: int = 0):
        self.lib = lib = ctypes.CDLL("libcuda.so.1")
        sig = {
            "cuInit": [ctypes.c_uint], "cuDeviceGet": [ctypes.POINTER(ctypes.c_int), ctypes.c_int],
            "cuDevicePrimaryCtxRetain": [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int],
            "cuCtxSetCurrent": [ctypes.c_void_p], "cuCtxSynchronize": [],
            "cuMemGetAllocationGranularity": [ctypes.POINTER(_SZ), ctypes.POINTER(_Prop), ctypes.c_int],
            "cuMemAddressReserve": [ctypes.POINTER(_U64), _SZ, _SZ, _U64, ctypes.c_ulonglong],
            "cuMemAddressFree": [_U64, _SZ],
            "cuMemCreate": [ctypes.POINTER(_U64), _SZ, ctypes.POINTER(_Prop), ctypes.c_ulonglong],
            "cuMemRelease": [_U64], "cuMemMap": [_U64, _SZ, _SZ, _U64, ctypes.c_ulonglong],
            "cuMemUnmap": [_U64, _SZ], "cuMemSetAccess": [_U64, _SZ, ctypes.POINTER(_Access), _SZ],
            "cuMemcpyHtoD_v2": [_U64, ctypes.c_void_p, _SZ], "cuMemcpyDtoD_v2": [_U64, _U64, _SZ],
            "cuMemcpyDtoH_v2": [ctypes.c_void_p, _U64, _SZ],
            "cuGetErrorString": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
        }
        for name, args in sig.items():
            getattr(lib, name).argtypes = args
            getattr(lib, name).restype = ctypes.c_int
        self.call("cuInit", 0)
        dev = ctypes.c_int()
        self.call("cuDeviceGet", ctypes.byref(dev), device)
        ctx = ctypes.c_void_p()
        self.call("cuDevicePrimaryCtxRetain", ctypes.byref(ctx), dev)
        self.call("cuCtxSetCurrent", ctx)
        self.prop = _Prop(type=CU_MEM_ALLOCATION_TYPE_PINNED, location=_Location(CU_MEM_LOCATION_TYPE_DEVICE, dev.value))
        self.access = _Access(location=_Location(CU_MEM_LOCATION_TYPE_DEVICE, dev.value),
                              flags=CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
        g = _SZ()
        self.call("cuMemGetAllocationGranularity", ctypes.byref(g), ctypes.byref(self.prop),
                  CU_MEM_ALLOC_GRANULARITY_MINIMUM)
        self.granule = g.value

    def call(self, name, *args):
        rc = getattr(self.lib, name)(*args)
        if rc != 0:
            msg = ctypes.c_char_p()
            self.lib.cuGetErrorString(rc, ctypes.byref(msg))
            raise RuntimeError(f"{name}: CUDA driver error {rc} ({(msg.value or b'?').decode()})")

    def page_bytes(self, row_bytes: int) -> int:
        """The smallest page holding whole token rows: a multiple of the granule."""
        return math.lcm(self.granule, row_bytes)

    # the VMM verbs, one page at a time
    def create(self, nbytes: int) -> int:
        h = _U64()
        self.call("cuMemCreate", ctypes.byref(h), nbytes, ctypes.byref(self.prop), 0)
        return h.value

    def reserve(self, nbytes: int) -> int:
        p = _U64()
        self.call("cuMemAddressReserve", ctypes.byref(p), nbytes, self.granule, 0, 0)
        return p.value

    def map(self, va: int, nbytes: int, handle: int) -> None:
        self.call("cuMemMap", va, nbytes, 0, handle, 0)
        self.call("cuMemSetAccess", va, nbytes, ctypes.byref(self.access), 1)

    def unmap(self, va: int, nbytes: int) -> None:
        self.call("cuMemUnmap", va, nbytes)

    def release(self, handle: int) -> None:
        self.call("cuMemRelease", handle)

    def free(self, va: int, nbytes: int) -> None:
        self.call("cuMemAddressFree", va, nbytes)


class Mapped:
    """One tensor (K or V) mapped for real: [B, width x page_tokens, row] bytes of virtual address
    space, a physical page created for each distinct id in page_map (int [B, width], -1 unmapped)
    and mapped at every place that names it. `data_ptr()` and `shape` are what kvx.attend reads of
    a tensor. `of_plan` also writes a kvlab.layouts.virtual plan's pages from the host."""

    def __init__(self, drv: Driver, page_map: np.ndarray, page_tokens: int, row_bytes: int, tail_shape: tuple):
        self.drv, self.row = drv, row_bytes
        self.page_bytes = page_tokens * row_bytes
        if self.page_bytes % drv.granule:
            raise ValueError(f"page of {self.page_bytes} bytes is not a multiple of the {drv.granule}-byte granule")
        B, width = page_map.shape
        self.seq_bytes = width * self.page_bytes
        self.size = B * self.seq_bytes
        self.shape = (B, width * page_tokens) + tuple(tail_shape)
        self.base = drv.reserve(self.size)
        self.handles: dict[int, int] = {}
        self.mapped: list[int] = []
        try:
            for b, j in zip(*np.nonzero(page_map >= 0)):
                pid = int(page_map[b, j])
                if pid not in self.handles:
                    self.handles[pid] = drv.create(self.page_bytes)
                va = self.seq_ptr(int(b)) + int(j) * self.page_bytes
                drv.map(va, self.page_bytes, self.handles[pid])
                self.mapped.append(va)
        except Exception:
            self.close()
            raise

    @classmethod
    def of_plan(cls, drv: Driver, plan, pages: np.ndarray) -> "Mapped":
        """pages: numpy [P, page_tokens, ...] in the cache's dtype, page p written once through its
        owner's range (plan.owner), so every other mapping of it reads the same bytes."""
        row = int(np.prod(pages.shape[2:])) * pages.itemsize
        m = cls(drv, plan.page_map, pages.shape[1], row, pages.shape[2:])
        try:
            for p, (b, j) in enumerate(plan.owner):
                src = np.ascontiguousarray(pages[p])
                drv.call("cuMemcpyHtoD_v2", m.seq_ptr(int(b)) + int(j) * m.page_bytes, src.ctypes.data, m.page_bytes)
            drv.call("cuCtxSynchronize")
        except Exception:
            m.close()
            raise
        return m

    def read(self, va: int, nbytes: int) -> bytes:
        buf = ctypes.create_string_buffer(nbytes)
        self.drv.call("cuMemcpyDtoH_v2", buf, va, nbytes)
        return buf.raw

    def seq_ptr(self, b: int) -> int:
        return self.base + b * self.seq_bytes

    def data_ptr(self) -> int:
        return self.base

    def view(self, _dtype) -> "Mapped":
        return self  # kvx reads data_ptr and shape only: a reinterpreting view of the range is the range

    def close(self) -> None:
        self.drv.call("cuCtxSynchronize")
        for va in self.mapped:
            self.drv.unmap(va, self.page_bytes)
        for h in self.handles.values():
            self.drv.release(h)
        if self.size:
            self.drv.free(self.base, self.size)
        self.mapped, self.handles, self.size = [], {}, 0


def filled(drv: Driver, t) -> Mapped:
    """A torch CUDA tensor [B, L, ...] copied into a fresh mapping, each sequence its own pages."""
    import torch
    B, L = t.shape[:2]
    row = t[0, 0].numel() * t.element_size()
    pt = drv.page_bytes(row) // row
    width = -(-L // pt)
    m = Mapped(drv, np.arange(B * width).reshape(B, width), pt, row, tuple(t.shape[2:]))
    torch.cuda.synchronize()
    for b in range(B):
        drv.call("cuMemcpyDtoD_v2", m.seq_ptr(b), t[b].data_ptr(), L * row)
    drv.call("cuCtxSynchronize")
    return m


def costs(drv: Driver, pages: int = 256) -> dict:
    """Host time per page of each VMM verb (µs; the ctypes call, ~1 µs, included): create, map +
    set-access, unmap, release, over `pages` granule-sized pages mapped into one range."""
    g = drv.granule
    va = drv.reserve(pages * g)
    t = {}
    t0 = time.perf_counter()
    hs = [drv.create(g) for _ in range(pages)]
    t["create_us"] = (time.perf_counter() - t0) / pages * 1e6
    t0 = time.perf_counter()
    for i, h in enumerate(hs):
        drv.map(va + i * g, g, h)
    t["map_access_us"] = (time.perf_counter() - t0) / pages * 1e6
    drv.call("cuCtxSynchronize")
    t0 = time.perf_counter()
    for i in range(pages):
        drv.unmap(va + i * g, g)
    t["unmap_us"] = (time.perf_counter() - t0) / pages * 1e6
    t0 = time.perf_counter()
    for h in hs:
        drv.release(h)
    t["release_us"] = (time.perf_counter() - t0) / pages * 1e6
    drv.free(va, pages * g)
    t["granule_bytes"] = g
    t["pages"] = pages
    return t


def replay(drv: Driver, res, page_bytes: int, max_pages_per_seq: int = 40, seq_slots: int = 256,
           pool: bool = False) -> dict:
    """Perform a kvlab.trace Result's page operations (a K and a V page apiece) with the driver and
    time each step on the host (the step's calls, then one synchronize). Per-step microseconds.
    pool: physical pages are created before the trace and released after it (a page pool, as
    vAttention keeps one), so a step pays only for mapping, unmapping and fork copies."""
    g = page_bytes
    if g % drv.granule:
        raise ValueError(f"trace pages of {g} bytes are not a multiple of the {drv.granule}-byte granule")
    slots: dict[str, int] = {}
    va = drv.reserve(2 * seq_slots * max_pages_per_seq * g)  # K and V halves; sequence slots reused
    free_slots = list(range(seq_slots))
    handles: dict[int, tuple[int, int]] = {}
    mapped: dict[tuple[str, int], int] = {}
    per_step = []
    if pool:
        for op in (op for ops in res.ops for op in ops if op[0] == "create"):
            handles[op[1]] = (drv.create(g), drv.create(g))
    released = []

    def addr(kv, sid, j):
        return va + ((kv * seq_slots + slots[sid]) * max_pages_per_seq + j) * g

    for ops in res.ops:
        t0 = time.perf_counter()
        for op in ops:
            if op[0] == "create":
                if not pool:
                    handles[op[1]] = (drv.create(g), drv.create(g))
            elif op[0] == "map":
                _, pid, sid, j = op
                if sid not in slots:
                    slots[sid] = free_slots.pop()
                for kv in (0, 1):
                    drv.map(addr(kv, sid, j), g, handles[pid][kv])
                mapped[(sid, j)] = pid
            elif op[0] == "copy":  # the parent's partial page into the child's new one
                _, src, dst = op
                s_loc = next(k for k, p in mapped.items() if p == src)
                d_loc = next(k for k, p in mapped.items() if p == dst)
                for kv in (0, 1):
                    drv.call("cuMemcpyDtoD_v2", addr(kv, *d_loc), addr(kv, *s_loc), g)
            elif op[0] == "unmap":
                _, pid, sid, j = op
                for kv in (0, 1):
                    drv.unmap(addr(kv, sid, j), g)
                del mapped[(sid, j)]
                if not any(s == sid for s, _ in mapped):
                    free_slots.append(slots.pop(sid))
            elif op[0] == "release":
                if pool:
                    released.append(handles.pop(op[1]))
                else:
                    for h in handles.pop(op[1]):
                        drv.release(h)
        drv.call("cuCtxSynchronize")
        per_step.append(time.perf_counter() - t0)
    for (sid, j) in list(mapped):
        for kv in (0, 1):
            drv.unmap(addr(kv, sid, j), g)
    for hk, hv in list(handles.values()) + released:
        drv.release(hk), drv.release(hv)
    drv.free(va, 2 * seq_slots * max_pages_per_seq * g)
    s = np.array(per_step)
    return {"steps": len(s), "pool": pool, "mean_us": float(s.mean() * 1e6),
            "mean_after_first_us": float(s[1:].mean() * 1e6),  # step 0 admits the whole first batch
            "median_us": float(np.median(s) * 1e6),
            "p99_us": float(np.percentile(s, 99) * 1e6), "max_us": float(s.max() * 1e6),
            "total_ms": float(s.sum() * 1e3)}
