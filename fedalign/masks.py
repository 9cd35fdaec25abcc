"""Subspace masks: which parameter entries train (1) and which stay fixed (0).

A `SubspaceMask` is the single source of truth for a TNA-PFN subspace. It is
sampled deterministically from (rho, seed, version, granularity, include,
exclude) and the parameter names/shapes of a model, so every process that
samples with the same arguments gets the same mask (and the same digest). It
serializes to a bit-packed blob (ceil(n/8) bytes of bits plus a small JSON
header) for the wire.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedalign.errors import UsageError, check

GRANULARITIES = ("weight", "neuron")
_MAGIC = b"FAMASK1"


def _shapes_of(model_or_shapes) -> dict[str, tuple[int, ...]]:
    if isinstance(model_or_shapes, torch.nn.Module):
        return {n: tuple(p.shape) for n, p in model_or_shapes.named_parameters()}
    return {n: tuple(s) for n, s in dict(model_or_shapes).items()}


def _selected(name: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, pat) for pat in include):
        return False
    return not (exclude and any(fnmatch.fnmatchcase(name, pat) for pat in exclude))


def mask_rng(seed: int, key: str, version: int = 0) -> np.random.Generator:
    """The random stream for parameter (or module) `key` of mask `version` under `seed`.

    The one derivation of mask randomness: a NumPy SeedSequence over the words
    (seed, crc32(key), version). Distinct (seed, version) pairs give distinct
    streams (for seed, version < 2**32 the entropy words differ, and
    SeedSequence mixes up to four words bijectively), unlike `seed + version`,
    where version 1 of seed s is version 0 of seed s + 1. A trailing zero word
    mixes like a missing one, so version 0 is exactly the stream masks had
    before versions existed (seed < 2**64): recorded digests stay valid.
    Seeding per name (not one stream in model order) keeps a parameter's mask
    independent of which other parameters are included or excluded.
    """
    check(
        isinstance(seed, (int, np.integer)) and int(seed) >= 0,
        f"mask seed {seed!r} must be a non-negative integer",
    )
    check(
        isinstance(version, (int, np.integer)) and 0 <= int(version) < 2**32,
        f"mask version {version!r} must be an integer in [0, 2**32)",
    )
    words = [int(seed), zlib.crc32(key.encode())]
    if version:
        words.append(int(version))
    return np.random.default_rng(words)


def _eligible(name: str, shape: Sequence[int], include, exclude) -> bool:
    # A 0-dim parameter (a scalar gain or temperature) is one entry: fixing a
    # random fraction of it is meaningless, so masks never fix it.
    return len(shape) > 0 and _selected(name, include, exclude)


def check_rho(rho: float) -> float:
    """rho is the FIXED fraction; 1.0 would freeze the whole model."""
    check(
        isinstance(rho, (int, float)) and 0.0 <= float(rho) < 1.0,
        f"rho={rho!r} is outside [0, 1): rho is the fraction of FIXED entries; "
        "use e.g. --rho 0.4",
    )
    return float(rho)


@dataclass(frozen=True)
class SubspaceMask:
    """Boolean mask per parameter name: True = trainable, False = fixed."""

    tensors: Mapping[str, torch.Tensor]
    meta: Mapping[str, object] = field(default_factory=dict)

    # ------------------------------------------------------------------ create
    @classmethod
    def sample(
        cls,
        model_or_shapes: torch.nn.Module | Mapping[str, Sequence[int]],
        rho: float,
        seed: int,
        granularity: str = "weight",
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        version: int = 0,
    ) -> SubspaceMask:
        """Sample a mask fixing a fraction `rho` of the selected entries.

        `weight`: independent Bernoulli(rho) per element (as published).
        `neuron`: one draw per output unit (row along dim 0), shared by all
        parameters of the same module (weight row and bias entry fix together).
        Only eligible parameters are masked (see `eligible`): those matched by
        `include` and not by `exclude` (fnmatch patterns on parameter names)
        with at least one dimension; the rest stay fully trainable.
        `version` numbers the masks of one run (FedPNU `resample`): the
        randomness comes from `mask_rng(seed, name, version)`, so no two
        (seed, version) pairs share a mask, and version 0 is the mask of `seed`.
        """
        rho = check_rho(rho)
        check(
            granularity in GRANULARITIES,
            f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}",
        )
        shapes = _shapes_of(model_or_shapes)
        tensors: dict[str, torch.Tensor] = {}
        for name, shape in shapes.items():
            if not _eligible(name, shape, include, exclude):
                tensors[name] = torch.ones(shape, dtype=torch.bool)
                continue
            if granularity == "weight":
                draw = mask_rng(seed, name, version).random(math.prod(shape)) >= rho
                tensors[name] = torch.from_numpy(draw.reshape(shape))
            else:
                module = name.rsplit(".", 1)[0] if "." in name else name
                rows = mask_rng(seed, module, version).random(shape[0]) >= rho
                full = np.broadcast_to(rows.reshape((-1,) + (1,) * (len(shape) - 1)), shape)
                tensors[name] = torch.from_numpy(np.array(full))
        meta = {
            "rho": rho,
            "seed": int(seed),
            "version": int(version),
            "granularity": granularity,
            "include": list(include or []),
            "exclude": list(exclude or []),
        }
        return cls(tensors=tensors, meta=meta)

    @classmethod
    def full(cls, model_or_shapes) -> SubspaceMask:
        """The mask that fixes nothing (vanilla training)."""
        shapes = _shapes_of(model_or_shapes)
        return cls({n: torch.ones(s, dtype=torch.bool) for n, s in shapes.items()}, {"rho": 0.0})

    def complement(self) -> SubspaceMask:
        """1 - M: trainable where M is fixed, and vice versa (FedPNU's other half).

        Only eligible parameters flip: those `sample` never masks (excluded,
        not included, or 0-dim) stay fully trainable in the complement too, so
        "not eligible" means "never fixed", by M or by 1 - M.
        """
        out = {n: ~m if self.eligible(n) else m.clone() for n, m in self.tensors.items()}
        meta = dict(self.meta)
        meta["complement"] = not bool(self.meta.get("complement", False))
        return SubspaceMask(out, meta)

    def eligible(self, name: str) -> bool:
        """Whether `sample` may fix entries of `name` (include/exclude of the meta, >= 1 dim)."""
        include, exclude = self.meta.get("include"), self.meta.get("exclude")
        return _eligible(name, tuple(self.tensors[name].shape), include, exclude)

    # --------------------------------------------------------------- inspect
    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    @property
    def numel(self) -> int:
        return sum(m.numel() for m in self.tensors.values())

    @property
    def num_fixed(self) -> int:
        return sum(int((~m).sum()) for m in self.tensors.values())

    @property
    def fixed_fraction(self) -> float:
        return self.num_fixed / max(self.numel, 1)

    def trainable(self, name: str) -> torch.Tensor:
        return self.tensors[name]

    def fixed(self, name: str) -> torch.Tensor:
        return ~self.tensors[name]

    def check_compatible(self, model_or_shapes) -> None:
        """Fail clearly when the mask was sampled for another architecture."""
        shapes = _shapes_of(model_or_shapes)
        mine = {n: tuple(m.shape) for n, m in self.tensors.items()}
        if mine != shapes:
            missing = sorted(set(shapes) - set(mine))[:3]
            extra = sorted(set(mine) - set(shapes))[:3]
            raise UsageError(
                "mask does not fit this model (missing "
                f"{missing}, unexpected {extra}, or different shapes); "
                "sample the mask from the same model architecture"
            )

    # ------------------------------------------------------------- serialize
    def _bits(self) -> np.ndarray:
        if not self.tensors:
            return np.zeros(0, dtype=bool)
        return np.concatenate([m.reshape(-1).numpy() for m in self.tensors.values()])

    def _header(self) -> bytes:
        layout = [[n, list(m.shape)] for n, m in self.tensors.items()]
        return json.dumps({"layout": layout, "meta": dict(self.meta)}, sort_keys=True).encode()

    def to_bytes(self) -> bytes:
        """MAGIC | u32 header length | JSON header | packed bits (ceil(n/8) bytes)."""
        header = self._header()
        return _MAGIC + struct.pack("<I", len(header)) + header + np.packbits(self._bits()).tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> SubspaceMask:
        check(blob[: len(_MAGIC)] == _MAGIC, "not a fedalign mask blob (bad magic bytes)")
        start = len(_MAGIC)
        (hlen,) = struct.unpack("<I", blob[start : start + 4])
        header = json.loads(blob[start + 4 : start + 4 + hlen])
        layout = header["layout"]
        total = sum(int(np.prod(s)) if s else 1 for _, s in layout)
        packed = np.frombuffer(blob[start + 4 + hlen :], dtype=np.uint8)
        check(packed.size == (total + 7) // 8, "mask blob is truncated or corrupt")
        bits = np.unpackbits(packed, count=total).astype(bool)
        tensors, offset = {}, 0
        for name, shape in layout:
            n = int(np.prod(shape)) if shape else 1
            tensors[name] = torch.from_numpy(bits[offset : offset + n].reshape(shape).copy())
            offset += n
        return cls(tensors=tensors, meta=header["meta"])

    @property
    def packed_nbytes(self) -> int:
        """Size of the bit payload alone: ceil(n/8) (what the bits cost, header aside)."""
        return (self.numel + 7) // 8

    @property
    def wire_nbytes(self) -> int:
        """Size of `to_bytes()`: magic, header length, JSON header and packed bits.

        This is what sending the mask costs; it exceeds `packed_nbytes` by the
        header (names, shapes, meta), which dominates for small models.
        """
        return len(_MAGIC) + 4 + len(self._header()) + self.packed_nbytes

    @property
    def digest(self) -> str:
        """SHA-256 over the layout (names, shapes) and the packed bits."""
        layout = json.dumps([[n, list(m.shape)] for n, m in self.tensors.items()]).encode()
        return hashlib.sha256(layout + np.packbits(self._bits()).tobytes()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubspaceMask) and self.digest == other.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    # ----------------------------------------------------------------- apply
    def restore_fixed(self, current: Mapping[str, object], reference: Mapping[str, object]) -> dict:
        """`current` with every fixed entry copied exactly from `reference`.

        Works on torch state dicts and on NumPy dicts (Flower ArrayRecords on
        the server); the result keeps the reference's dtype.
        """
        out = dict(current)
        for name, m in self.tensors.items():
            if name not in out:
                continue
            if isinstance(out[name], torch.Tensor):
                ref = torch.as_tensor(reference[name])
                out[name] = torch.where(m.to(ref.device), out[name], ref).to(ref.dtype)
            else:
                ref = np.asarray(reference[name])
                out[name] = np.where(m.numpy(), out[name], ref).astype(ref.dtype)
        return out


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def fixed_entries_equal(
    mask: SubspaceMask, a: Mapping[str, object], b: Mapping[str, object]
) -> bool:
    """True when every fixed entry of `a` is bit-identical to the one in `b`."""
    for name, m in mask.tensors.items():
        fixed = ~m.numpy()
        va, vb = _as_numpy(a[name])[fixed], _as_numpy(b[name])[fixed]
        if va.dtype != vb.dtype or va.tobytes() != vb.tobytes():
            return False
    return True
