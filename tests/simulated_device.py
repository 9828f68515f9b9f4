"""A non-CPU device on a CPU-only machine, for tests of device handling.

Bugs of the class "a CPU tensor or a CPU generator meets a GPU tensor" never show on a CPU-only
machine: everything is on the CPU, so every mix is legal. Running the same code with its tensors on
the `meta` device does not help either: meta tensors hold no values, so nothing that samples, indexes
by value or branches on a value can run, and a CPU generator filling a meta tensor is not refused.

`simulated_device()` gives tensors that live on another device *type* (reported as `lazy:0`, a device
type this CPU build of torch has no kernels for) while their values are computed on the CPU. Inside
the context every aten operation is intercepted and checked with the rules CUDA applies:

- an operation that mixes tensors of the simulated device with CPU tensors of one or more dimensions
  is refused ("Expected all tensors to be on the same device"), except copies between devices and
  CPU index tensors of advanced indexing, which CUDA accepts too; 0-dim CPU tensors are scalars;
- a random draw whose generator is not on the device of the tensor it fills is refused
  ("Expected a 'lazy' device type for generator but found 'cpu'"), as CUDA refuses a CPU generator;
- `Tensor.numpy()` refuses, `.item()`, `.tolist()`, `float(t)` and `.cpu()` work, as on CUDA.

It also counts host reads (`host_reads()`): operations that make the host wait for a device value
(`.item()`, `bool(t)`, `torch.equal`, `.tolist()`, a copy to the CPU), each one a device
synchronisation on a GPU, so a test can show that a loop has none per iteration.

So code that runs here on the simulated device has no cross-device mix that CUDA would refuse, and,
because values are computed exactly as on the CPU, its results can be compared bit for bit with a
CPU run. What it cannot show: CUDA kernels' numerics, memory, speed, NCCL (bench/gpu_check.sh does).

    with simulated_device() as dev:
        model = model.to(dev)
        out = sample_sequential(model, 16, generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

SIMULATED = torch.device("lazy", 0)
aten = torch.ops.aten

# Operations that make the host wait for a value on the device (a synchronisation on a GPU).
_HOST_READS = {aten._local_scalar_dense, aten.equal, aten.is_nonzero}
_counter = {"host_reads": 0}


def host_reads() -> int:
    """Host reads of simulated-device values since `simulated_device()` was entered."""
    return _counter["host_reads"]


# Operations that legitimately take tensors of two devices.
_COPIES = {aten._to_copy, aten.copy_, aten._copy_from, aten._copy_from_and_resize}
# Advanced indexing: CUDA accepts CPU index tensors (it moves them); self and values must match.
_INDEXING = {aten.index, aten.index_put_, aten.index_put, aten._index_put_impl_}


class SimTensor(torch.Tensor):
    """A tensor that reports the simulated device and keeps its values in a CPU tensor `elem`."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        # Created outside inference mode: a wrapper made inside it could not be a view of a normal tensor.
        with torch.inference_mode(False):
            out = torch.Tensor._make_wrapper_subclass(
                cls,
                elem.shape,
                strides=elem.stride(),
                storage_offset=elem.storage_offset(),
                dtype=elem.dtype,
                layout=elem.layout,
                device=SIMULATED,
                requires_grad=elem.requires_grad,
            )
        out.elem = elem
        return out

    def tolist(self):
        _counter["host_reads"] += 1
        return self.elem.tolist()

    def numpy(self, *args, **kwargs):
        raise TypeError(f"can't convert {SIMULATED} device type tensor to numpy. Use Tensor.cpu() first.")

    def __repr__(self) -> str:
        return f"SimTensor({self.elem!r}, device='{SIMULATED}')"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a simulated-device tensor outside `simulated_device()`")


def _is_simulated(device) -> bool:
    return device is not None and torch.device(device).type == SIMULATED.type


def _host_tensors(values) -> list[torch.Tensor]:
    flat, _ = tree_flatten(values)
    return [a for a in flat if isinstance(a, torch.Tensor) and not isinstance(a, SimTensor) and a.dim() > 0]


def _written_arguments(func, args, kwargs) -> list:
    """The arguments an in-place or out= operation writes into and returns, in schema order."""
    schema = func._schema
    if not schema.returns or not all(r.alias_info is not None and r.alias_info.is_write for r in schema.returns):
        return []
    written = []
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is not None and arg.alias_info.is_write:
            written.append(args[i] if i < len(args) else kwargs.get(arg.name))
    return written if len(written) == len(schema.returns) else []


class _Mode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        flat, _ = tree_flatten((args, kwargs))
        on_sim = any(isinstance(a, SimTensor) for a in flat)
        to_sim = _is_simulated(kwargs.get("device"))
        packet = func.overloadpacket
        to_host = packet is aten._to_copy and on_sim and not to_sim and kwargs.get("device") is not None
        if on_sim and (packet in _HOST_READS or to_host):
            _counter["host_reads"] += 1
        if packet in _INDEXING:
            checked = [args[0]] + ([args[2]] if len(args) > 2 else [])  # self and values, not the indices
            if on_sim and _host_tensors(checked):
                raise RuntimeError(f"{func}: self and values must be on {SIMULATED} (only indices may be on the CPU)")
        elif on_sim and packet not in _COPIES and _host_tensors((args, kwargs)):
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, {SIMULATED} and "
                f"cpu! (when checking arguments for {func})"
            )
        generator = kwargs.get("generator")
        if generator is not None:
            target = SIMULATED if (on_sim or to_sim) else torch.device(kwargs.get("device") or "cpu")
            if generator.device.type != target.type:
                raise RuntimeError(
                    f"Expected a '{target.type}' device type for generator but found '{generator.device.type}' "
                    f"(in {func})"
                )

        def unwrap(a):
            return a.elem if isinstance(a, SimTensor) else a

        cpu_args, cpu_kwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        if to_sim:
            cpu_kwargs["device"] = torch.device("cpu")
        out = func(*cpu_args, **cpu_kwargs)

        # In-place and out= operations return the (wrapped) tensor they wrote into.
        written = _written_arguments(func, args, kwargs)
        if written:
            return written[0] if len(written) == 1 else tuple(written)
        if packet is aten._local_scalar_dense:
            return out
        if packet is aten._to_copy:
            wrap = to_sim or (on_sim and kwargs.get("device") is None)
        else:
            wrap = on_sim or to_sim
        if not wrap:
            return out
        return tree_map(lambda a: SimTensor(a) if type(a) is torch.Tensor else a, out)


@contextlib.contextmanager
def simulated_device() -> Iterator[torch.device]:
    """Within the block, `SIMULATED` (yielded) is a working non-CPU device with CUDA's mixing rules."""
    real_tensor = torch.tensor

    def tensor(data, *args, device=None, **kwargs):
        # torch.tensor builds its result below the dispatcher: build on the CPU, then copy over.
        if _is_simulated(device):
            return real_tensor(data, *args, **kwargs).to(SIMULATED)
        return real_tensor(data, *args, device=device, **kwargs)

    # Module.to() swaps each parameter's contents in place, as it keeps the same Parameter objects on CUDA
    # (tied weights stay tied, optimizers and hooks keep their references).
    swap_before = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    torch.tensor = tensor
    # Every real device type has its torch.<type> module (torch.cuda): activation checkpointing looks it
    # up for the device of its inputs. An empty one says "not initialised", as an unused CUDA would.
    had_module = hasattr(torch, SIMULATED.type)
    if not had_module:
        setattr(torch, SIMULATED.type, types.ModuleType(f"torch.{SIMULATED.type}"))
    _counter["host_reads"] = 0
    try:
        with _Mode():
            yield SIMULATED
    finally:
        torch.tensor = real_tensor
        torch.__future__.set_swap_module_params_on_conversion(swap_before)
        if not had_module:
            delattr(torch, SIMULATED.type)
