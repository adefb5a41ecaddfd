"""The accelerate set-up of a pretraining run, checked against what ``accelerate launch`` asked for, and
what FSDP and DeepSpeed need of the model.

accelerate 1.x picks FSDP and DeepSpeed only for accelerator devices: under ``--device cpu`` it silently
falls back to DDP (gloo) for an FSDP launch and to plain processes for a DeepSpeed one, and without
``--device cpu`` on a machine with no GPU it starts independent single-process runs. Here FSDP and DeepSpeed
launches on CPU processes get FSDP and DeepSpeed (both run on CPU with gloo), and every other mismatch is an
error that says what to do.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..models import MUSK
from .models import musk_weights

__all__ = [
    "adapt_to_sharding",
    "evaluation_musk",
    "is_sharded",
    "make_accelerator",
    "restore_scalars",
    "vector_scalars",
]


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def make_accelerator(cpu: bool, mixed_precision: str):
    """An ``Accelerator`` whose distributed type is the one the launcher asked for (FSDP also on CPU)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    if _flag("ACCELERATE_USE_FSDP") and (cpu or not torch.cuda.is_available()):
        _check_fsdp_on_cpu(cpu, mixed_precision)
    if _flag("ACCELERATE_USE_DEEPSPEED") and cpu and not torch.cuda.is_available():
        # accelerate takes DeepSpeed for a GPU run only (cpu=False); DeepSpeed's CPU accelerator with gloo
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        gloo = InitProcessGroupKwargs(backend="gloo")
        accelerator = Accelerator(cpu=False, mixed_precision=mixed_precision, kwargs_handlers=[gloo])
    else:
        accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise ValueError(
            f"accelerate launch started {launched} processes but they did not join one run (accelerate found no "
            f"GPU to place them on): add --device cpu to train on CPU processes (gloo)"
        )
    kind = accelerator.distributed_type
    if _flag("ACCELERATE_USE_DEEPSPEED") and kind != DistributedType.DEEPSPEED:
        raise ValueError(
            f"this launch asks for DeepSpeed but accelerate set up {kind.value}: on a machine with GPUs DeepSpeed "
            f"runs on them (drop --device cpu)"
        )
    if _flag("ACCELERATE_USE_FSDP") and kind == DistributedType.MULTI_CPU:
        _fsdp_on_cpu(accelerator)
    elif _flag("ACCELERATE_USE_FSDP") and kind != DistributedType.FSDP:
        raise ValueError(f"this launch asks for FSDP but accelerate set up {kind.value}")
    return accelerator


def _check_fsdp_on_cpu(cpu: bool, mixed_precision: str) -> None:
    if not cpu:
        raise ValueError("this FSDP launch found no GPU: add --device cpu to run FSDP on CPU processes (gloo)")
    if mixed_precision != "no":
        raise ValueError("FSDP on CPU runs in fp32: use --precision fp32")
    if _flag("FSDP_SYNC_MODULE_STATES") or _flag("FSDP_CPU_RAM_EFFICIENT_LOADING"):
        raise ValueError(
            "FSDP on CPU: set fsdp_sync_module_states and fsdp_cpu_ram_efficient_loading to false in the accelerate "
            "config (accelerate synchronises module states through a GPU; every process builds the same seeded model)"
        )


def _fsdp_on_cpu(accelerator) -> None:
    """Complete the state accelerate leaves at DDP for an FSDP launch on CPU processes: the FSDP plugin from
    the launcher's settings and the FSDP distributed type (``prepare`` then wraps the model with FSDP)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the launcher's FSDP_* variables
    if plugin.fsdp_version != 1:
        raise ValueError(f"FSDP on CPU is supported with fsdp_version 1 (got {plugin.fsdp_version})")
    # "Offloading" the gathered optimizer state to the CPU it is already on copies nothing: torch's FSDP then
    # returns views of one buffer it reuses for every state, and exp_avg is saved equal to exp_avg_sq
    plugin.optim_state_dict_config.offload_to_cpu = False
    accelerator.state.fsdp_plugin = plugin
    for state in (accelerator.state.__dict__, PartialState._shared_state):
        state["distributed_type"] = DistributedType.FSDP
        state["device"] = torch.device("cpu")  # not cpu:0, which FSDP's device check tells apart from cpu


def is_sharded(accelerator) -> bool:
    """True when no single process holds the whole model (FSDP)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def adapt_to_sharding(accelerator, model: nn.Module, global_batch: int) -> None:
    """What FSDP and DeepSpeed need before the optimizer is built (no-op otherwise): 0-dim parameters as
    1-element vectors (both flatten parameters), and DeepSpeed told each process's micro-batch (accelerate
    reads it from prepared data loaders, and the trainer prepares none)."""
    kind = accelerator.distributed_type
    if kind not in ("FSDP", "DEEPSPEED"):
        return
    vector_scalars(model)
    if kind == "DEEPSPEED":
        config = accelerator.state.deepspeed_plugin.deepspeed_config
        config["train_micro_batch_size_per_gpu"] = global_batch // accelerator.num_processes


def vector_scalars(model: nn.Module) -> list[str]:
    """Turn every 0-dim parameter (MUSK's ``logit_scale``) into a 1-element vector, same value and
    ``requires_grad`` (the export turns them back). Returns the names changed."""
    changed = []
    for name, param in list(model.named_parameters()):
        if param.ndim == 0:
            owner_name, _, leaf = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            setattr(owner, leaf, nn.Parameter(param.detach().reshape(1), requires_grad=param.requires_grad))
            changed.append(name)
    return changed


def restore_scalars(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`vector_scalars` on a state dict: 1-element vectors back to the 0-dim tensors
    ``expected`` (a reference state dict) has under the same names."""
    return {
        k: v.reshape(()) if k in expected and expected[k].ndim == 0 and tuple(v.shape) == (1,) else v
        for k, v in state.items()
    }


def evaluation_musk(accelerator, model: nn.Module) -> MUSK | None:
    """The trained MUSK, whole, on the main process (None on the others); call on every process.

    DDP and single-process runs: the model itself. FSDP: a plain copy built from the gathered state dict
    (a collective), as FSDP's units cannot run on one process alone.
    """
    if not is_sharded(accelerator):
        return accelerator.unwrap_model(model).musk if accelerator.is_main_process else None
    state = accelerator.get_state_dict(model)  # whole on the main process, empty on the others
    if not accelerator.is_main_process:
        return None
    with torch.device("meta"):
        musk = MUSK(accelerator.unwrap_model(model).musk.config)
    musk.load_state_dict(restore_scalars(musk_weights(state), musk.state_dict()), strict=True, assign=True)
    return musk.to(accelerator.device)
