"""PowerSGD on the large gradients (train.comm_hook=powersgd), with state that survives DDP's
bucket re-plans and checkpoints.

    state, hook = build_hook("powersgd", model, ...)   # pipeline/comm.py: a PowerSGDHook
    ddp.register_comm_hook(state, hook)                # torch's powerSGD_hook per bucket

PowerSGD's state is kept per DDP bucket by torch, and DDP re-plans its buckets after the first
step of every process, resumed ones included: the first step after a resume runs one big bucket,
the next ones the re-planned buckets. So the state is also held per parameter (views, no copies;
refreshed as each bucket finishes) and a bucket whose contents changed is rebuilt from it. Q
starts as a Gaussian drawn from the one seed rule (core.seeds, Purpose.COMM_INIT at train.seed
and the parameter's index), not from torch's bucket-order RNG, and only compressed gradients
carry error feedback (see PowerSGDHook.remember), so no bucket plan changes the result. The
checkpoint holds that per-parameter form: the iteration, the RNG, Q per compressed weight (the
same on every rank), and every rank's error memory (they differ, and rank 0 writes the file):
with a world of W ranks the comm state is W times the bytes of the compressed gradients (0.23 GB
per rank on AlexNet).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState, powerSGD_hook

from core.seeds import Purpose, stream_seed
from pipeline.distributed import DistInfo

# torch's rule for a matrix worth compressing: (rows + cols) * rank * rate < rows * cols
MIN_COMPRESSION_RATE = 2
GATHER_CHUNK_BYTES = 256 << 20  # error memories reach rank 0 in pieces of at most this much


@dataclasses.dataclass(frozen=True)
class Slot:
    """One parameter's gradient inside a bucket, and how PowerSGD treats it."""

    name: str
    offset: int  # first element in the bucket's flat buffer
    numel: int
    rows: int  # the [rows, cols] matrix PowerSGD compresses; 0 when all-reduced uncompressed
    cols: int
    rank: int  # min(rows, cols, powersgd_rank) when compressed
    p_offset: int  # where its P and Q sit in torch's per-bucket P and Q memories
    q_offset: int

    @property
    def compressed(self) -> bool:
        return self.rows > 0


@dataclasses.dataclass(frozen=True)
class Layout:
    """A bucket's parameters in buffer order, with the P and Q sizes torch's hook will use."""

    slots: tuple[Slot, ...]
    p_size: int
    q_size: int

    @property
    def compressed(self) -> bool:
        return any(slot.compressed for slot in self.slots)


@dataclasses.dataclass
class Memory:
    """One parameter's PowerSGD memory: its error feedback (flat, this rank's own) and, for a
    compressed weight, its Q ([cols * rank], the same on every rank)."""

    error: torch.Tensor | None = None
    q: torch.Tensor | None = None


class PowerSGDHook:
    """torch's powerSGD_hook on the gradients of at least `min_elements` elements."""

    def __init__(
        self,
        model: nn.Module,
        *,
        rank: int,
        warmup_steps: int,
        min_elements: int,
        seed: int,
        process_group: torch_dist.ProcessGroup | None = None,
    ) -> None:
        self.rank = rank
        self.min_elements = min_elements
        self.seed = seed
        self.state = PowerSGDState(
            process_group,
            matrix_approximation_rank=rank,
            start_powerSGD_iter=warmup_steps,
            min_compression_rate=MIN_COMPRESSION_RATE,
            use_error_feedback=True,
            warm_start=True,
            random_seed=seed,
        )
        named = list(model.named_parameters())
        self.names = {id(p): name for name, p in named}
        self.index_of = {name: index for index, (name, _) in enumerate(named)}
        self.trainable = {name: tuple(p.shape) for name, p in named if p.requires_grad}
        self.layouts: dict[tuple[int, tuple[int, ...]], Layout] = {}  # by (index, parameter ids)
        self.placed: dict[int, Layout] = {}  # bucket index -> the layout its torch memory has
        self.memories: dict[str, Memory] = {}  # by parameter name: the newest finished state
        self.payload_bytes = 0  # handed to all-reduce by this rank so far (the bench reads it)
        self.serial: bool | None = None  # run buckets one after another (gloo); set on first use
        self.tail: torch.futures.Future | None = None  # the latest bucket's future

    # the hook ---------------------------------------------------------------------------------
    def communicate(self, bucket):  # no annotations: DDP checks them, and ours are strings
        """DDP calls this once per bucket per step as `hook(state, bucket)`, state = self; returns
        the future of the bucket's averaged gradients.

        On gloo the buckets run one after another: torch's chain issues its P and Q all-reduces
        from gloo's callback threads, so two buckets in flight would issue them in a different
        order on each rank, which gloo aborts on (torch tests PowerSGD on nccl only,
        pytorch/pytorch#58467). Each bucket still overlaps the rest of the backward pass."""
        state = self.state
        layout = self.layout(bucket)
        view = _SlotBucket(bucket.index(), bucket.is_last(), bucket.buffer(), layout)
        if state.iter < state.start_powerSGD_iter or not layout.compressed:
            state.maybe_increase_iter(view)  # torch counts steps on the last bucket
            self.payload_bytes += view.buffer().numel() * view.buffer().element_size()
            return self.in_order(lambda: default_hooks.allreduce_hook(state.process_group, view))
        if self.placed.get(view.index()) != layout:
            self.place(view.index(), layout, view.buffer())
        uncompressed = sum(slot.numel for slot in layout.slots if not slot.compressed)
        elements = uncompressed + layout.p_size + layout.q_size
        self.payload_bytes += elements * view.buffer().element_size()

        def compress() -> torch.futures.Future:
            def keep(fut: torch.futures.Future) -> torch.Tensor:
                self.remember(view.index(), layout)
                return fut.value()

            return powerSGD_hook(state, view).then(keep)

        return self.in_order(compress)

    def in_order(self, start) -> torch.futures.Future:
        """`start()` (which issues a bucket's collectives and returns its future) now, or on
        gloo once the previous bucket's future is done; the future of its result."""
        if self.serial is None:
            self.serial = torch_dist.get_backend(self.state.process_group) == "gloo"
        if not self.serial:
            return start()
        result: torch.futures.Future = torch.futures.Future()

        def run(_previous=None) -> None:
            try:
                start().add_done_callback(lambda done: _forward(done, result))
            except Exception as err:  # noqa: BLE001 (DDP re-raises it from the future)
                result.set_exception(err)

        previous, self.tail = self.tail, result
        if previous is None or previous.done():
            run()
        else:
            previous.add_done_callback(run)
        return result

    def layout(self, bucket: torch_dist.GradBucket) -> Layout:
        """The bucket's Layout (cached: DDP keeps its buckets after the first step)."""
        params = bucket.parameters()
        key = (bucket.index(), tuple(id(p) for p in params))
        if key not in self.layouts:
            buffer = bucket.buffer()
            gradients = bucket.gradients()
            offsets = [g.storage_offset() - buffer.storage_offset() for g in gradients]
            names = [self.names[id(p)] for p in params]
            self.layouts[key] = plan_layout(names, gradients, offsets, self.rank, self.min_elements)
        return self.layouts[key]

    def place(self, index: int, layout: Layout, buffer: torch.Tensor) -> None:
        """Build torch's memories for bucket `index` from the per-parameter ones (a new bucket
        plan, or a resume): zeros where no gradient has an error memory, Q drawn where a
        compressed one has none yet."""
        for other, placed in list(self.placed.items()):  # a parameter lives in one bucket
            names = {slot.name for slot in placed.slots}
            if other != index and names & {slot.name for slot in layout.slots}:
                del self.placed[other]
        error = torch.zeros_like(buffer)
        q = torch.empty(layout.q_size, dtype=buffer.dtype, device=buffer.device)
        for slot in layout.slots:
            memory = self.memories.get(slot.name, Memory())
            if memory.error is not None and memory.error.numel() == slot.numel:
                error[slot.offset : slot.offset + slot.numel].copy_(memory.error)
            if slot.compressed:
                size = slot.cols * slot.rank
                fresh = memory.q is None or memory.q.numel() != size
                source = self.initial_q(slot) if fresh else memory.q
                q[slot.q_offset : slot.q_offset + size].copy_(source)
        state = self.state
        state.error_dict[index] = error
        state.p_memory_dict[index] = torch.zeros(
            layout.p_size, dtype=buffer.dtype, device=buffer.device
        )
        state.q_memory_dict[index] = q  # present: torch's hook does not draw Q from its RNG
        self.placed[index] = layout

    def initial_q(self, slot: Slot) -> torch.Tensor:
        """A parameter's first Q: Gaussian from the one seed rule at (train.seed, the parameter's
        index), the same on every rank (torch's hook orthogonalizes it before use)."""
        seed = stream_seed(self.seed, Purpose.COMM_INIT, index=self.index_of[slot.name])
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(slot.cols * slot.rank, generator=generator)

    def remember(self, index: int, layout: Layout) -> None:
        """After a bucket finished: the compressed gradients' memories become views of torch's
        new ones, and the others' error is zeroed.

        torch also feeds back an uncompressed gradient's error (its local value minus the mean)
        when it shares a bucket with a compressed one. Summed over ranks that is zero, so it
        only adds rounding, and which bucket a bias lands in would change the result; here
        only compressed gradients carry error."""
        error, q = self.state.error_dict[index], self.state.q_memory_dict[index]
        for slot in layout.slots:
            where = slice(slot.offset, slot.offset + slot.numel)
            if slot.compressed:
                self.memories[slot.name] = Memory(
                    error=error[where], q=q[slot.q_offset : slot.q_offset + slot.cols * slot.rank]
                )
            else:
                error[where].zero_()

    # what it compresses -----------------------------------------------------------------------
    def compressed_names(self) -> list[str]:
        """Parameters whose gradients are compressed once the warm-up is over."""
        return [
            name
            for name, shape in self.trainable.items()
            if compressed_shape(shape, self.rank, self.min_elements) is not None
        ]

    def payload_bytes_per_step(self) -> int:
        """Bytes each rank hands to all-reduce per compressed step (fp32 gradients)."""
        return (
            powersgd_payload_elements(list(self.trainable.values()), self.rank, self.min_elements)
            * 4
        )

    # checkpoints ------------------------------------------------------------------------------
    def state_dict(self, dist: DistInfo) -> dict[str, Any]:
        """Iteration, RNG, Q per compressed weight, and every rank's error memories (gathered to
        rank 0: a collective)."""
        errors = {n: m.error for n, m in sorted(self.memories.items()) if m.error is not None}
        gathered = gather_to_main(errors, dist)
        rng = self.state.rng.get_state()
        return {
            "powersgd_rank": self.rank,
            "min_elements": self.min_elements,
            "iteration": int(self.state.iter),
            "rng": {
                "keys": torch.from_numpy(rng[1].astype(np.int64)),
                "pos": int(rng[2]),
                "has_gauss": int(rng[3]),
                "cached_gaussian": float(rng[4]),
            },
            "q": {
                n: m.q.detach().cpu().clone()
                for n, m in sorted(self.memories.items())
                if m.q is not None
            },
            "errors": gathered,  # one {name: tensor} per rank on rank 0; [] elsewhere
        }

    def load_state_dict(self, saved: dict[str, Any], dist: DistInfo, carried: set) -> None:
        """The parts of `saved` that `carried` names (see describe_resume); placed into torch's
        per-bucket memories at each bucket's next compressed step."""
        device = dist.torch_device
        if "iteration" in carried:
            self.state.iter = int(saved["iteration"])
            rng = saved["rng"]
            self.state.rng.set_state(
                (
                    "MT19937",
                    rng["keys"].numpy().astype(np.uint32),
                    rng["pos"],
                    rng["has_gauss"],
                    rng["cached_gaussian"],
                )
            )
        memories: dict[str, Memory] = {}
        if "q" in carried:
            for name, q in saved.get("q", {}).items():
                memories.setdefault(name, Memory()).q = q.to(device)
        errors = saved.get("errors") or []
        if "errors" in carried and len(errors) > dist.rank:
            for name, error in errors[dist.rank].items():
                memories.setdefault(name, Memory()).error = error.to(device)
        self.memories = memories
        self.placed.clear()
        self.state.error_dict.clear()
        self.state.p_memory_dict.clear()
        self.state.q_memory_dict.clear()


class _SlotBucket:
    """The GradBucket torch's powerSGD_hook sees: gradients to compress as [rows, cols] matrices,
    the rest as flat vectors (which its own size rule never compresses), all views of the
    bucket's buffer. It holds nothing of DDP's bucket, so it may be used after the hook
    returned (on gloo its work starts when the previous bucket's is done)."""

    def __init__(self, index: int, is_last: bool, buffer: torch.Tensor, layout: Layout):
        self._index = index
        self._is_last = is_last
        self._buffer = buffer
        self._layout = layout

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def index(self) -> int:
        return self._index

    def is_last(self) -> bool:
        return self._is_last

    def gradients(self) -> list[torch.Tensor]:
        views = []
        for slot in self._layout.slots:
            flat = self._buffer[slot.offset : slot.offset + slot.numel]
            views.append(flat.view(slot.rows, slot.cols) if slot.compressed else flat)
        return views


def _forward(done: torch.futures.Future, result: torch.futures.Future) -> None:
    """Complete `result` with `done`'s value or exception."""
    try:
        result.set_result(done.value())
    except Exception as err:  # noqa: BLE001 (handed on to whoever waits on result)
        result.set_exception(err)


def compressed_shape(
    shape: tuple[int, ...], rank: int, min_elements: int
) -> tuple[int, int] | None:
    """(rows, cols) PowerSGD compresses a gradient of `shape` as, or None when it is
    all-reduced uncompressed (fewer than min_elements elements, a vector, or too little to
    gain under torch's rule)."""
    numel = int(np.prod(shape)) if shape else 1
    if len(shape) < 2 or numel < max(min_elements, 1):
        return None
    rows, cols = shape[0], numel // shape[0]
    matrix_rank = min(rows, cols, rank)
    if (rows + cols) * matrix_rank * MIN_COMPRESSION_RATE >= rows * cols:
        return None
    return rows, cols


def powersgd_payload_elements(
    shapes: Sequence[tuple[int, ...]], rank: int, min_elements: int
) -> int:
    """Elements each rank all-reduces per compressed step: (rows + cols) * rank per compressed
    gradient (P and Q), every element of the others."""
    total = 0
    for shape in shapes:
        matrix = compressed_shape(tuple(shape), rank, min_elements)
        if matrix is None:
            total += int(np.prod(shape)) if shape else 1
        else:
            rows, cols = matrix
            total += (rows + cols) * min(rows, cols, rank)
    return total


def plan_layout(
    names: Sequence[str],
    gradients: Sequence[torch.Tensor],
    offsets: Sequence[int],
    rank: int,
    min_elements: int,
) -> Layout:
    """A bucket's Layout from its parameter names, gradient views and their buffer offsets. P
    and Q are laid out as torch's powerSGD_hook lays them: compressed matrices grouped by shape,
    groups in order of first appearance."""
    matrices = []
    for name, gradient, offset in zip(names, gradients, offsets):
        shape = tuple(gradient.shape)
        matrix = compressed_shape(shape, rank, min_elements)
        # a gradient is one dense block of the buffer: viewed as [rows, cols] when its first
        # dim is the outermost (contiguous and channels_last both are)
        if matrix is not None and gradient.stride(0) != gradient.numel() // shape[0]:
            matrix = None
        matrices.append((name, offset, gradient.numel(), matrix))
    order: dict[tuple[int, int], list[str]] = {}
    for name, _, _, matrix in matrices:
        if matrix is not None:
            order.setdefault(matrix, []).append(name)
    p_offsets, q_offsets, p_size, q_size = {}, {}, 0, 0
    for (rows, cols), group in order.items():
        matrix_rank = min(rows, cols, rank)
        for name in group:
            p_offsets[name], q_offsets[name] = p_size, q_size
            p_size += rows * matrix_rank
            q_size += cols * matrix_rank
    slots = tuple(
        Slot(
            name=name,
            offset=offset,
            numel=numel,
            rows=matrix[0] if matrix else 0,
            cols=matrix[1] if matrix else 0,
            rank=min(matrix[0], matrix[1], rank) if matrix else 0,
            p_offset=p_offsets.get(name, 0),
            q_offset=q_offsets.get(name, 0),
        )
        for name, offset, numel, matrix in matrices
    )
    return Layout(slots, p_size, q_size)


def gather_to_main(
    tensors: dict[str, torch.Tensor], dist: DistInfo
) -> list[dict[str, torch.Tensor]]:
    """Every rank's `tensors` (same names and sizes on every rank) on rank 0, on the CPU, in rank
    order; [] on the other ranks. Sent in pieces of GATHER_CHUNK_BYTES so the device never holds
    more than world x one piece."""
    names = list(tensors)
    sizes = [tensors[name].numel() for name in names]
    if not dist.is_distributed:
        return [{name: t.detach().cpu().clone() for name, t in tensors.items()}]
    if not names:
        return [{} for _ in range(dist.world_size)] if dist.is_main else []
    flat = torch.cat([tensors[name].detach().reshape(-1) for name in names])
    chunk = max(1, GATHER_CHUNK_BYTES // (flat.element_size() * dist.world_size))
    pieces: list[list[torch.Tensor]] = [[] for _ in range(dist.world_size)]
    for start in range(0, flat.numel(), chunk):
        part = flat[start : start + chunk].contiguous()
        gathered = (
            [torch.empty_like(part) for _ in range(dist.world_size)] if dist.is_main else None
        )
        torch_dist.gather(part, gathered, dst=0)
        if dist.is_main:
            for rank, received in enumerate(gathered):
                pieces[rank].append(received.cpu())
    if not dist.is_main:
        return []
    result = []
    for rank_pieces in pieces:
        whole = torch.cat(rank_pieces)
        result.append(dict(zip(names, (t.clone() for t in whole.split(sizes)))))
    return result
